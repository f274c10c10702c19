// SPDX-License-Identifier: MPL-2.0
//! What protect mode's fault handler does with a SIGSEGV/SIGBUS that is not a fault on one of
//! its blocks: what the kernel would have done without it. Async-signal-safe (`sigaction`,
//! `pthread_sigmask`, `rt_tgsigqueueinfo`, atomics).
//!
//! The actions that were there before ours are kept here, and only here: the process-wide
//! action stays ours. A previous handler with `SA_RESETHAND` is reset on this copy (once,
//! atomically: the first signal to reach it runs it, every later one finds the default
//! action), never on the process's action.

use std::ffi::c_void;
use std::ptr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

/// The actions that were there before ours, for SIGSEGV and SIGBUS (a `OnceLock` read is one
/// atomic load).
static PREVIOUS: OnceLock<[libc::sigaction; 2]> = OnceLock::new();
/// Whether the previous action, an `SA_RESETHAND` handler, has been used (and is the default
/// action from then on), for SIGSEGV and SIGBUS.
static RESET: [AtomicBool; 2] = [const { AtomicBool::new(false) }; 2];

fn index(sig: libc::c_int) -> usize {
    usize::from(sig == libc::SIGBUS)
}

/// Records the actions ours replaced.
pub(super) fn set_previous(previous: [libc::sigaction; 2]) {
    let _ = PREVIOUS.set(previous);
}

/// The previous action for `sig`, to run now: `SIG_DFL` once an `SA_RESETHAND` handler was
/// run (taking it marks such a handler run).
fn take_previous(sig: libc::c_int) -> Option<libc::sigaction> {
    let mut prev = PREVIOUS.get()?[index(sig)];
    let handler = !matches!(prev.sa_sigaction, libc::SIG_DFL | libc::SIG_IGN);
    if handler
        && prev.sa_flags & libc::SA_RESETHAND != 0
        && RESET[index(sig)].swap(true, Ordering::AcqRel)
    {
        prev.sa_sigaction = libc::SIG_DFL;
        prev.sa_flags = 0;
    }
    Some(prev)
}

/// Passes a signal that is not ours on, as the kernel would have delivered it without us: to
/// the previous handler (with the mask the kernel would have set for it, and its
/// `SA_RESETHAND` applied to our copy of it), ignored if it was ignored and sent (a fault
/// cannot be ignored), or the default action.
///
/// # Safety
/// The arguments of the signal handler, which runs with its own mask (`sa_mask`) set.
pub(super) unsafe fn chain(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut c_void) {
    // A signal in the instant between our install and the record of what was there: the
    // default action.
    let Some(prev) = take_previous(sig) else {
        // SAFETY: per the contract.
        unsafe { die(sig, info) };
        return;
    };
    // SAFETY: the kernel's siginfo.
    let sent = unsafe { (*info).si_code } <= 0;
    match prev.sa_sigaction {
        libc::SIG_DFL => {
            // SAFETY: per the contract.
            unsafe { die(sig, info) }
        }
        libc::SIG_IGN if sent => {}
        libc::SIG_IGN => {
            // SAFETY: per the contract.
            unsafe { die(sig, info) }
        }
        handler => {
            // SAFETY: the previous handler, called as the kernel would have: with the mask of
            // the interrupted code plus its own `sa_mask`, plus the signal unless
            // SA_NODEFER; with the arguments its flags ask for. Our own mask is set again
            // after it returns.
            unsafe {
                let uc = &*(ctx as *const libc::ucontext_t);
                let mut mask: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut mask);
                for s in 1..=64 {
                    if libc::sigismember(&uc.uc_sigmask, s) == 1
                        || libc::sigismember(&prev.sa_mask, s) == 1
                    {
                        libc::sigaddset(&mut mask, s);
                    }
                }
                if prev.sa_flags & libc::SA_NODEFER == 0 {
                    libc::sigaddset(&mut mask, sig);
                } else {
                    libc::sigdelset(&mut mask, sig);
                }
                let mut ours: libc::sigset_t = std::mem::zeroed();
                libc::pthread_sigmask(libc::SIG_SETMASK, &mask, &mut ours);
                if prev.sa_flags & libc::SA_SIGINFO != 0 {
                    let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut c_void) =
                        std::mem::transmute(handler);
                    f(sig, info, ctx);
                } else {
                    let f: extern "C" fn(libc::c_int) = std::mem::transmute(handler);
                    f(sig);
                }
                libc::pthread_sigmask(libc::SIG_SETMASK, &ours, ptr::null_mut());
            }
        }
    }
}

/// Dies of `sig`: the default action, and the signal sent again to this thread with its
/// original `siginfo` (a fault's address and code, a sender's pid), delivered as soon as the
/// system call returns.
///
/// # Safety
/// The arguments of the signal handler.
pub(super) unsafe fn die(sig: libc::c_int, info: *mut libc::siginfo_t) {
    // SAFETY: plain system calls with valid arguments (rt_tgsigqueueinfo to the calling
    // thread may carry any si_code).
    unsafe {
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(sig, &dfl, ptr::null_mut());
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, ptr::null_mut());
        let (pid, tid) = (libc::getpid(), libc::gettid());
        if libc::syscall(libc::SYS_rt_tgsigqueueinfo, pid, tid, sig, info) != 0 {
            libc::syscall(libc::SYS_tgkill, pid, tid, sig);
        }
    }
}
