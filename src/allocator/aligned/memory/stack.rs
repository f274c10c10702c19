// SPDX-License-Identifier: MPL-2.0
//! The fault handler's own stacks. A signal handler runs on whatever stack the faulting thread
//! gives it: its alternate signal stack (glibc's `SIGSTKSZ` is 8 KiB, and the kernel's signal
//! frame alone takes 3.3 KiB of it on an AVX-512 machine), or its own stack. The report, and
//! above all the unwinder behind its backtrace, need several KiB more; so the handler moves
//! to a stack of its own ([`STACKS`] of [`REPORT_STACK`] bytes, mapped when the handler is
//! installed, each with an inaccessible page below it) for all its work, and uses only a few
//! hundred bytes of the thread's stack.
//!
//! [`on_stack`] calls a function on another stack through a small assembly trampoline whose
//! unwind information points back to the old stack, so a backtrace taken on the new stack
//! continues through the signal frame into the faulting code (the trampoline is what the
//! `psm` crate does for `stacker`, written out here for x86-64 and AArch64; elsewhere the
//! function runs on the current stack).

use std::ffi::c_void;
use std::ptr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

/// Bytes of each of the handler's stacks (untouched pages cost nothing).
pub const REPORT_STACK: usize = 256 << 10;
/// The handler's stacks: as many threads as this work on violations at once off their own
/// stacks (a report waits for the report lock on its stack, and writes a line to stderr
/// that may block); a thread that finds none free within [`STACK_WAIT_NS`] counts its
/// violation on its own stack.
pub const STACKS: usize = 4;
/// How long a fault waits for one of the handler's stacks.
const STACK_WAIT_NS: u64 = 1_000_000_000;

/// The top of the first stack (0: not mapped yet); stack `i`'s top is `i` strides below.
static TOP: AtomicUsize = AtomicUsize::new(0);
/// Bit `i`: stack `i` is in use.
static BUSY: AtomicU32 = AtomicU32::new(0);

/// Bytes from one stack's top to the next: the stack and the inaccessible page below it.
fn stride() -> usize {
    REPORT_STACK + rustix::param::page_size()
}

/// Maps the handler's stacks, once (not async-signal-safe: called when the handler is
/// installed), each with an inaccessible page below it (an overflow faults instead of
/// writing over another stack). Without them (the system refused the mapping) the handler
/// runs on the thread's stack.
pub(super) fn prepare() {
    if TOP.load(Ordering::Acquire) != 0 {
        return;
    }
    let page = rustix::param::page_size();
    let len = stride() * STACKS;
    // SAFETY: a new anonymous mapping at an address of the kernel's choosing; only parts of it
    // are made inaccessible. It is never unmapped.
    unsafe {
        let map = libc::mmap(
            ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        );
        if map == libc::MAP_FAILED {
            return;
        }
        for i in 0..STACKS {
            libc::mprotect(map.byte_add(i * stride()), page, libc::PROT_NONE);
        }
        TOP.store(map as usize + len, Ordering::Release);
    }
}

/// One of the handler's stacks, taken by [`claim`], given back when dropped.
pub(super) struct Stack {
    index: usize,
    /// Its top (16-byte aligned).
    pub(super) top: usize,
}

impl Drop for Stack {
    fn drop(&mut self) {
        BUSY.fetch_and(!(1 << self.index), Ordering::Release);
    }
}

/// Nanoseconds of the monotonic clock (async-signal-safe).
pub(super) fn now_ns() -> u64 {
    // SAFETY: clock_gettime(2) writes our timespec.
    let ts = unsafe {
        let mut ts: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
        ts
    };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// One of the handler's stacks, waiting up to [`STACK_WAIT_NS`] for one to be free; `None`
/// when none is mapped or all stayed busy. Async-signal-safe (atomics, `sched_yield`,
/// `clock_gettime`).
pub(super) fn claim() -> Option<Stack> {
    let top = TOP.load(Ordering::Acquire);
    if top == 0 {
        return None;
    }
    let mut start = None;
    loop {
        let busy = BUSY.load(Ordering::Relaxed);
        if let Some(index) = (0..STACKS).find(|&i| busy & (1 << i) == 0) {
            if BUSY
                .compare_exchange(
                    busy,
                    busy | 1 << index,
                    Ordering::Acquire,
                    Ordering::Relaxed,
                )
                .is_ok()
            {
                return Some(Stack {
                    index,
                    top: top - index * stride(),
                });
            }
            continue;
        }
        let started = *start.get_or_insert_with(now_ns);
        if now_ns().saturating_sub(started) > STACK_WAIT_NS {
            return None;
        }
        // SAFETY: sched_yield(2) has no arguments.
        unsafe { libc::sched_yield() };
    }
}

#[cfg(target_arch = "x86_64")]
std::arch::global_asm!(
    ".pushsection .text.memkit_protect_on_stack,\"ax\",@progbits",
    ".globl memkit_protect_on_stack",
    ".hidden memkit_protect_on_stack",
    ".type memkit_protect_on_stack,@function",
    ".p2align 4",
    // (arg: rdi, f: rsi, top: rdx): calls f(arg) with rsp = top.
    "memkit_protect_on_stack:",
    ".cfi_startproc",
    "push rbp",
    ".cfi_def_cfa_offset 16",
    ".cfi_offset rbp, -16",
    "mov rbp, rsp",
    ".cfi_def_cfa_register rbp",
    "mov rsp, rdx",
    "call rsi",
    "mov rsp, rbp",
    "pop rbp",
    ".cfi_def_cfa rsp, 8",
    "ret",
    ".cfi_endproc",
    ".size memkit_protect_on_stack, .-memkit_protect_on_stack",
    ".popsection",
);

#[cfg(target_arch = "aarch64")]
std::arch::global_asm!(
    ".pushsection .text.memkit_protect_on_stack,\"ax\",@progbits",
    ".globl memkit_protect_on_stack",
    ".hidden memkit_protect_on_stack",
    ".type memkit_protect_on_stack,@function",
    ".p2align 2",
    // (arg: x0, f: x1, top: x2): calls f(arg) with sp = top.
    "memkit_protect_on_stack:",
    ".cfi_startproc",
    "stp x29, x30, [sp, #-16]!",
    ".cfi_def_cfa_offset 16",
    ".cfi_offset x29, -16",
    ".cfi_offset x30, -8",
    "mov x29, sp",
    ".cfi_def_cfa_register x29",
    "mov sp, x2",
    "blr x1",
    "mov sp, x29",
    ".cfi_def_cfa sp, 16",
    "ldp x29, x30, [sp], #16",
    ".cfi_def_cfa_offset 0",
    ".cfi_restore x29",
    ".cfi_restore x30",
    "ret",
    ".cfi_endproc",
    ".size memkit_protect_on_stack, .-memkit_protect_on_stack",
    ".popsection",
);

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
unsafe extern "C" {
    fn memkit_protect_on_stack(arg: *mut c_void, f: unsafe extern "C" fn(*mut c_void), top: usize);
}

/// Calls `f(arg)` with the stack pointer at `top`.
///
/// # Safety
/// `[top - n, top)` must be a stack that nothing else uses during the call, large enough for
/// `f` (`top` aligned to 16 bytes); `f` must not unwind.
pub(super) unsafe fn on_stack(top: usize, f: unsafe extern "C" fn(*mut c_void), arg: *mut c_void) {
    debug_assert_eq!(top % 16, 0);
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    // SAFETY: per the caller's contract; the trampoline restores the stack pointer.
    unsafe {
        memkit_protect_on_stack(arg, f, top)
    };
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    // SAFETY: per the caller's contract, on the current stack.
    unsafe {
        let _ = top;
        f(arg)
    };
}
