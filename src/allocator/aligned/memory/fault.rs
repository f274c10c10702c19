// SPDX-License-Identifier: MPL-2.0
//! Protect mode's SIGSEGV/SIGBUS handler. Async-signal-safe only: it reads and writes the
//! registry's atomics, formats into buffers on its stack, and calls `write`, `mprotect`,
//! `prctl`, `sigaction`, `sigprocmask`, `sched_yield` and `rt_tgsigqueueinfo`; no lock, no
//! allocation. It works on a stack of its own (`stack.rs`): on the faulting thread's stack it
//! uses a few hundred bytes.
//!
//! What it does with a signal:
//! - sent (`kill`, `raise`, `tgkill`, `sigqueue`: `si_code <= 0`), or a fault at an address
//!   that is no protected block's: passed on to the handler that was there before, as the
//!   kernel would have delivered it ([`chain`]): called with its mask and flags; ignored if it
//!   was ignored (a fault the kernel would not let be ignored kills the process); with the
//!   default action, the process dies of the signal, with its original `siginfo`.
//! - a fault on a protected block: reported once ([`handle`]); then in abort mode the process
//!   dies of the signal (it does not run the access again: an access that became legal
//!   meanwhile would leave the process alive without its handler); in continue mode the
//!   block's whole mapping is opened, so that the access completes, and closed again at the
//!   block's next protection change; when the system refuses to open it (at the limit of
//!   memory mappings), that is said and the process dies of the signal as in abort mode.

use std::ffi::c_void;
use std::sync::Once;
use std::sync::atomic::Ordering;

use super::chain::{chain, die};
use super::registry::{
    self, GUARD_OPENED, OVERRAN_AFTER, OVERRAN_BEFORE, PAGES_OPENED, ProtectMode, REGISTRY,
    protect_mode,
};
use super::report::{Access, Detail, Kind, REPORTING, claim_reporting, report};

static INSTALL: Once = Once::new();

/// Installs the handler for SIGSEGV and SIGBUS once, with its own stack, and an alternate
/// signal stack for this thread if it has none. Called with the first protected block, not
/// when the mode is set: a program that sets up its own fault handler after GStreamer's init
/// (gst-launch-1.0 does) then has ours in front of it, and gets the faults that are not ours
/// passed on.
pub(super) fn install() {
    INSTALL.call_once(|| {
        super::stack::prepare();
        // SAFETY: plain libc calls with valid arguments; the alternate stack is leaked on
        // purpose (it must outlive the thread's signals). The first `backtrace` loads the
        // unwinder (libgcc_s), which must not happen inside the handler.
        unsafe {
            let mut frame = [std::ptr::null_mut::<c_void>(); 1];
            libc::backtrace(frame.as_mut_ptr(), 1);
            let mut old: libc::stack_t = std::mem::zeroed();
            libc::sigaltstack(std::ptr::null(), &mut old);
            if old.ss_flags & libc::SS_DISABLE != 0 {
                let size = libc::SIGSTKSZ.max(64 << 10);
                let stack = Box::leak(vec![0u8; size].into_boxed_slice());
                let ss = libc::stack_t {
                    ss_sp: stack.as_mut_ptr().cast(),
                    ss_flags: 0,
                    ss_size: size,
                };
                libc::sigaltstack(&ss, std::ptr::null_mut());
            }
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_fault as *const () as usize;
            // Every signal blocked while the handler runs (SIGSEGV and SIGBUS too: one sent
            // meanwhile waits, and is passed on once the handler returns), but the
            // synchronous ones it cannot block (a blocked fault signal kills the process).
            action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigfillset(&mut action.sa_mask);
            for sig in [libc::SIGILL, libc::SIGFPE, libc::SIGTRAP, libc::SIGSYS] {
                libc::sigdelset(&mut action.sa_mask, sig);
            }
            let mut previous: [libc::sigaction; 2] = std::mem::zeroed();
            libc::sigaction(libc::SIGSEGV, &action, &mut previous[0]);
            libc::sigaction(libc::SIGBUS, &action, &mut previous[1]);
            super::chain::set_previous(previous);
        }
    });
}

/// The faulting access (x86-64: bits 1, a write, and 4, an instruction fetch, of the
/// page-fault error code).
///
/// # Safety
/// `ctx` must be the `ucontext_t` the kernel passed to the handler.
unsafe fn access_of(ctx: *mut libc::c_void) -> Access {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: per the caller's contract.
        let uc = unsafe { &*(ctx as *const libc::ucontext_t) };
        let err = uc.uc_mcontext.gregs[libc::REG_ERR as usize];
        if err & 16 != 0 {
            Access::Fetch
        } else if err & 2 != 0 {
            Access::Write
        } else {
            Access::Read
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = ctx;
        Access::Unknown
    }
}

/// The faulting instruction's address (0 where unknown).
///
/// # Safety
/// `ctx` must be the `ucontext_t` the kernel passed to the handler.
unsafe fn fault_ip(ctx: *mut c_void) -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: per the caller's contract.
        let uc = unsafe { &*(ctx as *const libc::ucontext_t) };
        uc.uc_mcontext.gregs[libc::REG_RIP as usize] as usize
    }
    #[cfg(target_arch = "aarch64")]
    {
        // SAFETY: per the caller's contract.
        let uc = unsafe { &*(ctx as *const libc::ucontext_t) };
        uc.uc_mcontext.pc as usize
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let _ = ctx;
        0
    }
}

/// A hash of the general-purpose registers and the instruction pointer of the faulting
/// context (0 where unknown): an access that runs again after the handler returned finds
/// them exactly as they were.
///
/// # Safety
/// `ctx` must be the `ucontext_t` the kernel passed to the handler.
unsafe fn registers_hash(ctx: *mut c_void) -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: per the caller's contract.
        let uc = unsafe { &*(ctx as *const libc::ucontext_t) };
        // R8 to R15, RDI, RSI, RBP, RBX, RDX, RAX, RCX, RSP, RIP (FNV-1a over the words).
        uc.uc_mcontext.gregs[..=libc::REG_RIP as usize]
            .iter()
            .fold(0xcbf2_9ce4_8422_2325, |h, &r| {
                (h ^ r as u64).wrapping_mul(0x0100_0000_01b3)
            })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = ctx;
        0
    }
}

/// What to do once the handler is done with a fault.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Return: the access runs again, on pages now open (continue mode).
    Resume,
    /// Die of the signal (abort mode).
    Die,
}

/// A fault on a protected block, handed to [`handle`] across the stack switch.
struct Fault {
    slot: usize,
    /// The block's mapping, as pinned.
    map: (usize, usize),
    addr: usize,
    access: Access,
    ip: usize,
    regs: u64,
    /// How much of the report to write: [`Detail::Full`] on one of the handler's stacks with
    /// the report lock, [`Detail::Line`] there without it, [`Detail::Brief`] on the thread's
    /// own stack (the handler's stacks all busy).
    detail: Detail,
    verdict: Verdict,
    /// The thread's alternate signal stack, disabled while the handler works on its own
    /// stack (see [`handle_on_stack`]).
    altstack: libc::stack_t,
}

extern "C" fn on_fault(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut c_void) {
    // A fault inside this thread's report (its stack walk), or a signal sent meanwhile.
    // SAFETY: the handler's own arguments.
    if unsafe { super::recover::intercept(sig, info, ctx) } {
        return;
    }
    // SAFETY: the kernel passes a valid siginfo_t for SA_SIGINFO handlers.
    let (code, addr) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
    // A sent signal (si_code <= 0) is no fault, whatever its si_addr field holds.
    let slot = if code > 0 {
        registry::pin_waiting(addr)
    } else {
        None
    };
    let Some((slot, start, end)) = slot else {
        // SAFETY: the handler's own arguments.
        unsafe { chain(sig, info, ctx) };
        return;
    };
    let mut fault = Fault {
        slot,
        map: (start, end),
        addr,
        // SAFETY: ctx is the handler's context.
        access: unsafe { access_of(ctx) },
        // SAFETY: as above.
        ip: unsafe { fault_ip(ctx) },
        // SAFETY: as above.
        regs: unsafe { registers_hash(ctx) },
        detail: Detail::Brief,
        verdict: Verdict::Resume,
        altstack: libc::stack_t {
            ss_sp: std::ptr::null_mut(),
            ss_flags: libc::SS_DISABLE,
            ss_size: 0,
        },
    };
    // The work is done on one of the handler's own stacks; on the thread's own only when
    // they all stay busy (then briefly: see `Detail::Brief`).
    match super::stack::claim() {
        Some(stack) => {
            // SAFETY: the stack is ours until `stack` drops; `handle_on_stack` cannot unwind
            // (extern "C").
            unsafe { super::stack::on_stack(stack.top, handle_on_stack, (&raw mut fault).cast()) };
            drop(stack);
            if fault.altstack.ss_flags & libc::SS_DISABLE == 0 {
                // SAFETY: the stack the thread had; it is not on it by the kernel's account
                // (that one is disabled), so the call is allowed.
                unsafe { libc::sigaltstack(&fault.altstack, std::ptr::null_mut()) };
            }
        }
        None => handle(&mut fault),
    }
    registry::unpin(slot);
    if fault.verdict == Verdict::Die {
        // SAFETY: the handler's own arguments.
        unsafe { die(sig, info) };
    }
}

/// [`handle`], called on the handler's own stack. The thread's alternate signal stack is
/// disabled meanwhile (and enabled again by the caller, back on the thread's stack): the
/// kernel does not count the handler's stack as the alternate one, and would otherwise place
/// a signal delivered now (one the handler's mask lets through) at the alternate stack's top,
/// over the frames of this handler; disabled, it is placed below them, on this stack.
///
/// # Safety
/// `fault` must point at a live [`Fault`].
unsafe extern "C" fn handle_on_stack(fault: *mut c_void) {
    // SAFETY: per the contract.
    let fault = unsafe { &mut *fault.cast::<Fault>() };
    let off = libc::stack_t {
        ss_sp: std::ptr::null_mut(),
        ss_flags: libc::SS_DISABLE,
        ss_size: 0,
    };
    // SAFETY: sigaltstack(2) with valid arguments; it refuses (and changes nothing) only on
    // the alternate stack, which this is not.
    if unsafe { libc::sigaltstack(&off, &mut fault.altstack) } != 0 {
        fault.altstack.ss_flags = libc::SS_DISABLE;
    }
    // One report at a time; a thread that waits too long for its turn writes one line.
    let claimed = claim_reporting();
    fault.detail = if claimed { Detail::Full } else { Detail::Line };
    handle(fault);
    if claimed {
        REPORTING.store(false, Ordering::Release);
    }
}

/// What a fault on a block is, from the address and the block's state.
fn classify(slot: usize, addr: usize, access: Access) -> Kind {
    let r = &REGISTRY;
    let data = r.data[slot].load(Ordering::Relaxed);
    let end = data + r.maxsize[slot].load(Ordering::Relaxed);
    let readers = r.readers[slot].load(Ordering::Relaxed);
    let writers = r.writers[slot].load(Ordering::Relaxed);
    if r.freed[slot].load(Ordering::Acquire) != 0 {
        Kind::AfterFree
    } else if addr < data {
        Kind::BeforeBlock
    } else if addr >= end {
        Kind::PastMaxsize
    } else if readers > 0 && writers == 0 && matches!(access, Access::Write | Access::Unknown) {
        Kind::WriteThroughRead
    } else {
        Kind::NoMapping
    }
}

/// Reports a fault on a pinned block once, and in continue mode opens the block's whole
/// mapping (guard pages included) so that the access completes when it runs again; the next
/// protection change of the block closes it.
fn handle(fault: &mut Fault) {
    let r = &REGISTRY;
    let slot = fault.slot;
    let kind = classify(slot, fault.addr, fault.access);
    let seen = registry::Seen {
        tid: registry::thread_id(),
        addr: fault.addr,
        ip: fault.ip,
        regs: fault.regs,
    };
    // Checked first: the fault is recorded as the thread's last either way.
    let again = registry::same_fault_again(seen);
    let continued = continues_neighbours_overrun(slot, fault.map, fault.addr);
    if !again && !continued {
        report(
            kind,
            fault.access,
            fault.addr,
            slot,
            None,
            fault.ip,
            fault.detail,
        );
    }
    // An instruction fetch cannot complete on pages that are never executable (nor would it
    // without protect mode): the process dies of it in either mode.
    if protect_mode() != ProtectMode::Continue || fault.access == Access::Fetch {
        fault.verdict = Verdict::Die;
        return;
    }
    let (start, end) = fault.map;
    let in_pages = fault.addr >= r.pages_start[slot].load(Ordering::Relaxed)
        && fault.addr < r.pages_end[slot].load(Ordering::Relaxed);
    if matches!(kind, Kind::BeforeBlock | Kind::PastMaxsize) && in_pages {
        // An access to the slack, reported here: the slack check does not report it again.
        r.slack_reported[slot].store(fault.addr, Ordering::Relaxed);
    }
    // An access past the block's pages, reported here: the overrun that reached it crossed
    // the slack on that side, which the slack check does not report again.
    let overran = match kind {
        Kind::PastMaxsize if !in_pages => OVERRAN_AFTER,
        Kind::BeforeBlock if !in_pages => OVERRAN_BEFORE,
        _ => 0,
    };
    // SAFETY: the mapping is ours and pinned (not reused or unmapped until we unpin it).
    let opened = unsafe {
        libc::mprotect(
            start as *mut c_void,
            end - start,
            libc::PROT_READ | libc::PROT_WRITE,
        )
    } == 0;
    if !opened {
        // The system refused (at `vm.max_map_count`, the change would split a mapping): the
        // access would fault again for ever. Said, then the process dies of the signal.
        // SAFETY: errno is this thread's.
        let errno = unsafe { *libc::__errno_location() };
        super::report::cannot_open(errno);
        fault.verdict = Verdict::Die;
        return;
    }
    // Set after the change, so that the protection change that clears the bit comes after
    // the opening it undoes.
    r.opened[slot].fetch_or(GUARD_OPENED | PAGES_OPENED | overran, Ordering::AcqRel);
    fault.verdict = Verdict::Resume;
}

/// Whether a fault on the outer pages of a region (a guard page, or the unused pages before
/// the block's) continues an overrun of the neighbouring region's block, already reported
/// there: the region that ends where this one starts (or starts where it ends) was opened by
/// continue mode at an access past its block's pages on this side. Not this region's block's
/// violation; the same one again.
fn continues_neighbours_overrun(slot: usize, (start, end): (usize, usize), addr: usize) -> bool {
    let r = &REGISTRY;
    let (pages_start, pages_end) = (
        r.pages_start[slot].load(Ordering::Relaxed),
        r.pages_end[slot].load(Ordering::Relaxed),
    );
    let (edge, bit) = if addr < pages_start {
        (start, OVERRAN_AFTER)
    } else if addr >= pages_end {
        (end, OVERRAN_BEFORE)
    } else {
        return false;
    };
    registry::slots_in_use().any(|k| {
        let opened = r.opened[k].load(Ordering::Acquire);
        let map_end = r.map_end[k].load(Ordering::Relaxed);
        let touches = map_end != 0
            && if bit == OVERRAN_AFTER {
                map_end == edge
            } else {
                r.map_start[k].load(Ordering::Relaxed) == edge
            };
        k != slot && touches && opened & GUARD_OPENED != 0 && opened & bit != 0
    })
}
