// SPDX-License-Identifier: MPL-2.0
//! A fault inside the report's stack walk: the walk stops there, the report says so, and the
//! process goes on as it would have without the report.
//!
//! The unwinder reads the faulting thread's stack and code, which the violation may have
//! damaged (a smashed return address), or which may lie in a protected block (a call through
//! a pointer into one). [`guarded`] runs the walk with SIGSEGV and SIGBUS let through (the
//! handler blocks them while it works) and the registers it must come back with saved; a
//! fault on that thread meanwhile reaches the handler, which calls [`intercept`]: it points
//! the interrupted context back at the end of [`guarded`] (the registers saved, the landing
//! address), and returns; the kernel's `sigreturn` then restores the signal mask of the walk
//! and the alternate stack with the rest of the context. The frames of the walk are
//! abandoned, which is sound because none of them holds anything: glibc's `backtrace` and
//! libgcc's unwinder allocate nothing and take no lock while they read the stack (libgcc 12
//! finds unwind tables with glibc's lock-free `_dl_find_object`; its mutex for frames
//! registered by a JIT is held only while it searches those tables, which are not the
//! damaged memory). The symbol lookup after the walk (`dladdr`, which takes the loader's
//! lock) reads only the loader's own tables and runs outside the guard.
//!
//! A signal *sent* to the thread during the walk (`si_code <= 0`) is not the walk's: it is
//! kept and sent again to the thread when the walk ends, where it waits for the handler to
//! return like any other.
//!
//! Only the thread that holds the report lock (`report::REPORTING`) walks a stack, so the
//! saved registers and the deferred signal are one static each. On targets other than x86-64
//! the walk runs unguarded (SIGSEGV stays blocked: a fault in it ends the process).

use std::ffi::c_void;
use std::sync::atomic::{AtomicI32, AtomicU64, AtomicUsize, Ordering};

/// The thread walking its stack now (0: none).
static WALKER: AtomicI32 = AtomicI32::new(0);
/// The registers [`guarded`] comes back with (x86-64: rbx, rbp, r12 to r15, rsp, the landing
/// address), written by its trampoline.
static SAVED: [AtomicUsize; 8] = [const { AtomicUsize::new(0) }; 8];
/// The address whose access stopped the walk (set by [`intercept`]).
static STOPPED_AT: AtomicUsize = AtomicUsize::new(0);
/// SIGSEGV and SIGBUS sent to the walking thread meanwhile (0: none; else the signal), and
/// their `siginfo`.
static DEFERRED: [AtomicI32; 2] = [const { AtomicI32::new(0) }; 2];
static DEFERRED_INFO: [[AtomicU64; 16]; 2] = [const { [const { AtomicU64::new(0) }; 16] }; 2];

fn index(sig: libc::c_int) -> usize {
    usize::from(sig == libc::SIGBUS)
}

#[cfg(target_arch = "x86_64")]
std::arch::global_asm!(
    ".pushsection .text.memkit_protect_try,\"ax\",@progbits",
    ".globl memkit_protect_try",
    ".hidden memkit_protect_try",
    ".type memkit_protect_try,@function",
    ".p2align 4",
    // (f: rdi, arg: rsi, saved: rdx) -> eax: calls f(arg) and returns 0; or, when a fault
    // stopped f and the handler pointed the context at the landing below, returns 1. The
    // callee-saved registers, the stack pointer and the landing address are saved first.
    "memkit_protect_try:",
    ".cfi_startproc",
    "push rbp",
    ".cfi_def_cfa_offset 16",
    ".cfi_offset rbp, -16",
    "mov rbp, rsp",
    ".cfi_def_cfa_register rbp",
    "mov [rdx], rbx",
    "mov [rdx + 8], rbp",
    "mov [rdx + 16], r12",
    "mov [rdx + 24], r13",
    "mov [rdx + 32], r14",
    "mov [rdx + 40], r15",
    "mov [rdx + 48], rsp",
    "lea rax, [rip + .Lmemkit_protect_try_landing]",
    "mov [rdx + 56], rax",
    "mov rax, rdi",
    "mov rdi, rsi",
    "call rax",
    "xor eax, eax",
    ".cfi_remember_state",
    "pop rbp",
    ".cfi_def_cfa rsp, 8",
    "ret",
    ".cfi_restore_state",
    ".Lmemkit_protect_try_landing:",
    "mov eax, 1",
    "pop rbp",
    ".cfi_def_cfa rsp, 8",
    "ret",
    ".cfi_endproc",
    ".size memkit_protect_try, .-memkit_protect_try",
    ".popsection",
);

#[cfg(target_arch = "x86_64")]
unsafe extern "C" {
    fn memkit_protect_try(
        f: unsafe extern "C" fn(*mut c_void),
        arg: *mut c_void,
        saved: *const AtomicUsize,
    ) -> libc::c_int;
}

/// SIGSEGV and SIGBUS.
fn fault_signals() -> libc::sigset_t {
    // SAFETY: a set of ours, initialised by sigemptyset.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGSEGV);
        libc::sigaddset(&mut set, libc::SIGBUS);
        set
    }
}

/// Runs `f(arg)` (a stack walk), stopping it at a fault on this thread: `Ok(())` when it
/// completed, `Err(address)` when a fault at `address` stopped it. The caller holds the
/// report lock. Async-signal-safe.
///
/// # Safety
/// `f` must not unwind, and must hold nothing that abandoning its frames would leak (a lock,
/// an allocation, a value with a destructor).
pub(super) unsafe fn guarded(
    f: unsafe extern "C" fn(*mut c_void),
    arg: *mut c_void,
) -> Result<(), usize> {
    #[cfg(target_arch = "x86_64")]
    {
        let tid = super::registry::thread_id();
        let set = fault_signals();
        // SAFETY: a zeroed sigset is a valid value to be overwritten.
        let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
        WALKER.store(tid, Ordering::SeqCst);
        // SAFETY: the signal mask of this thread changes for the walk and back; the
        // trampoline calls `f` as the contract allows, saving what `intercept` restores.
        let completed = unsafe {
            libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, &mut old);
            let stopped = memkit_protect_try(f, arg, SAVED.as_ptr());
            libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
            stopped == 0
        };
        WALKER.store(0, Ordering::SeqCst);
        send_deferred(tid);
        if completed {
            Ok(())
        } else {
            Err(STOPPED_AT.load(Ordering::Relaxed))
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        // SAFETY: per the contract.
        unsafe { f(arg) };
        Ok(())
    }
}

/// Sends again the signals sent to this thread during the walk, with their `siginfo`: they
/// wait while the handler blocks them, like signals sent at that moment.
fn send_deferred(tid: i32) {
    for (deferred, saved) in DEFERRED.iter().zip(&DEFERRED_INFO) {
        let sig = deferred.swap(0, Ordering::Acquire);
        if sig == 0 {
            continue;
        }
        let mut info = [0u64; 16];
        for (word, saved) in info.iter_mut().zip(saved) {
            *word = saved.load(Ordering::Relaxed);
        }
        // SAFETY: rt_tgsigqueueinfo(2) to this thread with a siginfo the kernel gave us.
        unsafe {
            libc::syscall(
                libc::SYS_rt_tgsigqueueinfo,
                libc::getpid(),
                tid,
                sig,
                info.as_ptr(),
            )
        };
    }
}

/// Takes a signal that reached the handler on the thread walking its stack: a fault stops
/// the walk (the context returns to the end of [`guarded`]); a sent signal is kept for later.
/// `false` when the signal is not the walk's (no walk on this thread).
///
/// # Safety
/// The arguments of the signal handler.
pub(super) unsafe fn intercept(
    sig: libc::c_int,
    info: *mut libc::siginfo_t,
    ctx: *mut c_void,
) -> bool {
    let walker = WALKER.load(Ordering::SeqCst);
    if walker == 0 || walker != super::registry::thread_id() {
        return false;
    }
    // SAFETY: the kernel's siginfo.
    let (code, addr) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
    if code <= 0 {
        // SAFETY: the kernel's siginfo is 128 bytes.
        let words = unsafe { std::slice::from_raw_parts(info as *const u64, 16) };
        for (saved, &word) in DEFERRED_INFO[index(sig)].iter().zip(words) {
            saved.store(word, Ordering::Relaxed);
        }
        DEFERRED[index(sig)].store(sig, Ordering::Release);
        return true;
    }
    #[cfg(target_arch = "x86_64")]
    {
        STOPPED_AT.store(addr, Ordering::Relaxed);
        // SAFETY: the handler's context; the registers written are those the trampoline
        // saved for this walk, on this thread.
        let uc = unsafe { &mut *(ctx as *mut libc::ucontext_t) };
        let regs = [
            libc::REG_RBX,
            libc::REG_RBP,
            libc::REG_R12,
            libc::REG_R13,
            libc::REG_R14,
            libc::REG_R15,
            libc::REG_RSP,
            libc::REG_RIP,
        ];
        for (reg, saved) in regs.into_iter().zip(&SAVED) {
            uc.uc_mcontext.gregs[reg as usize] = saved.load(Ordering::Relaxed) as i64;
        }
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (addr, ctx);
        false
    }
}
