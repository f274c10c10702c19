// SPDX-License-Identifier: MPL-2.0
//! Protect mode's SIGSEGV/SIGBUS handler. Async-signal-safe only: it reads the registry's
//! atomics, formats into a buffer on its stack, and calls `write`, `mprotect`, `prctl`,
//! `sigaction` and `raise`; no lock, no allocation. A fault at an address that is no protected
//! block's goes to the handler that was there before (or the default action).

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Once, OnceLock};

use super::registry::{
    GUARD_OPENED, MAX_BLOCKS, PAGES_OPENED, ProtectMode, REGISTRY, protect_mode,
};
use crate::attribution::published;

/// The kinds of violation, as reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    WriteThroughRead = 0,
    NoMapping = 1,
    AfterFree = 2,
    BeforeBlock = 3,
    PastMaxsize = 4,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::WriteThroughRead,
        Kind::NoMapping,
        Kind::AfterFree,
        Kind::BeforeBlock,
        Kind::PastMaxsize,
    ];

    /// Its name in the tracer's JSON report.
    pub fn nick(self) -> &'static str {
        match self {
            Kind::WriteThroughRead => "write-through-read",
            Kind::NoMapping => "no-mapping",
            Kind::AfterFree => "after-free",
            Kind::BeforeBlock => "before-block",
            Kind::PastMaxsize => "past-maxsize",
        }
    }

    /// What the report says.
    pub fn describe(self) -> &'static str {
        match self {
            Kind::WriteThroughRead => "write through a READ mapping",
            Kind::NoMapping => "access with no mapping alive",
            Kind::AfterFree => "access after free",
            Kind::BeforeBlock => "access before the block",
            Kind::PastMaxsize => "access past maxsize",
        }
    }
}

/// Violations seen, by kind.
static COUNTS: [AtomicU64; 5] = [const { AtomicU64::new(0) }; 5];

/// Violations of `kind` seen so far (continue mode goes on after each).
pub fn violations(kind: Kind) -> u64 {
    COUNTS[kind as usize].load(Ordering::Relaxed)
}

static INSTALL: Once = Once::new();
/// The actions that were there before ours, for SIGSEGV and SIGBUS (read by the handler: a
/// `OnceLock` read is one atomic load).
static PREVIOUS: OnceLock<[libc::sigaction; 2]> = OnceLock::new();

/// Installs the handler for SIGSEGV and SIGBUS once, on an alternate stack for this thread.
/// Called with the first protected block, not when the mode is set: a program that sets up
/// its own fault handler after GStreamer's init (gst-launch-1.0 does) then has ours in front
/// of it, and gets the faults that are not ours passed on.
pub(super) fn install() {
    INSTALL.call_once(|| {
        // SAFETY: plain libc calls with valid arguments; the alternate stack is leaked on
        // purpose (it must outlive the thread's signals). The first `backtrace` loads the
        // unwinder (libgcc_s), which must not happen inside the handler.
        unsafe {
            let mut frame = [std::ptr::null_mut::<libc::c_void>(); 1];
            libc::backtrace(frame.as_mut_ptr(), 1);
            let size = libc::SIGSTKSZ.max(64 << 10);
            let stack = Box::leak(vec![0u8; size].into_boxed_slice());
            let ss = libc::stack_t {
                ss_sp: stack.as_mut_ptr().cast(),
                ss_flags: 0,
                ss_size: size,
            };
            libc::sigaltstack(&ss, std::ptr::null_mut());
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_fault as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_NODEFER;
            libc::sigemptyset(&mut action.sa_mask);
            let mut previous: [libc::sigaction; 2] = std::mem::zeroed();
            libc::sigaction(libc::SIGSEGV, &action, &mut previous[0]);
            libc::sigaction(libc::SIGBUS, &action, &mut previous[1]);
            let _ = PREVIOUS.set(previous);
        }
    });
}

/// A fixed buffer that text is appended to without allocating.
struct Line {
    buf: [u8; 512],
    len: usize,
}

impl Line {
    fn new() -> Line {
        Line {
            buf: [0; 512],
            len: 0,
        }
    }

    fn str(&mut self, s: &str) -> &mut Line {
        for &b in s.as_bytes() {
            if self.len < self.buf.len() {
                self.buf[self.len] = b;
                self.len += 1;
            }
        }
        self
    }

    fn dec(&mut self, mut v: u64) -> &mut Line {
        let mut digits = [0u8; 20];
        let mut n = 0;
        loop {
            digits[n] = b'0' + (v % 10) as u8;
            n += 1;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        for i in (0..n).rev() {
            let d = [digits[i]];
            // SAFETY: an ASCII digit is UTF-8.
            self.str(unsafe { std::str::from_utf8_unchecked(&d) });
        }
        self
    }

    fn hex(&mut self, v: usize) -> &mut Line {
        self.str("0x");
        let mut started = false;
        for shift in (0..usize::BITS / 4).rev() {
            let nibble = (v >> (shift * 4)) & 0xf;
            if nibble != 0 || started || shift == 0 {
                started = true;
                let c = [b"0123456789abcdef"[nibble]];
                // SAFETY: an ASCII hex digit is UTF-8.
                self.str(unsafe { std::str::from_utf8_unchecked(&c) });
            }
        }
        self
    }

    fn write(&self) {
        // SAFETY: write(2) is async-signal-safe; the buffer is ours.
        unsafe { libc::write(2, self.buf.as_ptr().cast(), self.len) };
    }
}

/// Whether the faulting access was a write (x86-64: bit 1 of the page-fault error code).
///
/// # Safety
/// `ctx` must be the `ucontext_t` the kernel passed to the handler.
unsafe fn was_write(ctx: *mut libc::c_void) -> Option<bool> {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: per the caller's contract.
        let uc = unsafe { &*(ctx as *const libc::ucontext_t) };
        Some(uc.uc_mcontext.gregs[libc::REG_ERR as usize] & 2 != 0)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = ctx;
        None
    }
}

/// The registry entry whose mapping holds `addr`.
fn find(addr: usize) -> Option<usize> {
    let r = &REGISTRY;
    (0..MAX_BLOCKS).find(|&i| {
        let end = r.map_end[i].load(Ordering::Acquire);
        end != 0 && addr < end && addr >= r.map_start[i].load(Ordering::Relaxed)
    })
}

extern "C" fn on_fault(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t for SA_SIGINFO handlers.
    let addr = unsafe { (*info).si_addr() } as usize;
    let Some(slot) = find(addr) else {
        // SAFETY: passes the signal on as the kernel would have.
        unsafe { chain(sig, info, ctx) };
        return;
    };
    let r = &REGISTRY;
    let page = rustix::param::page_size();
    let start = r.map_start[slot].load(Ordering::Relaxed);
    let end = r.map_end[slot].load(Ordering::Relaxed);
    let readers = r.readers[slot].load(Ordering::Relaxed);
    let writers = r.writers[slot].load(Ordering::Relaxed);
    // SAFETY: ctx is the handler's context.
    let write = unsafe { was_write(ctx) };
    let kind = if r.freed[slot].load(Ordering::Acquire) != 0 {
        Kind::AfterFree
    } else if addr < start + page {
        Kind::BeforeBlock
    } else if addr >= end - page {
        Kind::PastMaxsize
    } else if readers > 0 && writers == 0 && write != Some(false) {
        Kind::WriteThroughRead
    } else {
        Kind::NoMapping
    };
    report(kind, write, addr, slot, None);
    if protect_mode() == ProtectMode::Continue {
        // Open what was touched, so that the faulting instruction completes when it runs
        // again: the guard page (closed again at the block's next map or unmap), or the
        // block's pages (given the protection its mappings ask for then).
        let (from, len) = match kind {
            Kind::BeforeBlock | Kind::PastMaxsize => {
                r.opened[slot].fetch_or(GUARD_OPENED, Ordering::AcqRel);
                (addr & !(page - 1), page)
            }
            _ => {
                r.opened[slot].fetch_or(PAGES_OPENED, Ordering::AcqRel);
                (start + page, end - start - 2 * page)
            }
        };
        // SAFETY: the mapping is ours and alive (found in the registry).
        unsafe {
            libc::mprotect(
                from as *mut libc::c_void,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
            )
        };
        return;
    }
    // Abort mode: the default action, so the process dies of this signal as it would have.
    // SAFETY: plain libc calls; returning re-runs the faulting instruction.
    unsafe {
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(sig, &dfl, std::ptr::null_mut());
    }
}

/// Damage found in the slack of a block's pages (by its canary: `found` says when), reported
/// like a fault; in abort mode the process then aborts.
pub(super) fn report_slack(kind: Kind, addr: usize, slot: usize, found: &str) {
    report(kind, Some(true), addr, slot, Some(found));
    if protect_mode() != ProtectMode::Continue {
        std::process::abort();
    }
}

/// Writes the report of a violation to stderr and records it. Async-signal-safe: a buffer on
/// the stack, `write`, atomics, and glibc's `backtrace` (loaded before the first fault).
fn report(kind: Kind, write: Option<bool>, addr: usize, slot: usize, found: Option<&str>) {
    // One report at a time, so that threads reporting at once do not mix their lines; the
    // wait is bounded (a report stuck halfway cannot stop the others for good).
    let mut spins = 0;
    while REPORTING
        .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
        && spins < 100_000
    {
        spins += 1;
        std::thread::yield_now();
    }
    write_report(kind, write, addr, slot, found);
    REPORTING.store(false, Ordering::Release);
}

/// Whether a thread is writing a report.
static REPORTING: AtomicBool = AtomicBool::new(false);

fn write_report(kind: Kind, write: Option<bool>, addr: usize, slot: usize, found: Option<&str>) {
    let r = &REGISTRY;
    let data = r.data[slot].load(Ordering::Relaxed);
    let maxsize = r.maxsize[slot].load(Ordering::Relaxed);
    let readers = r.readers[slot].load(Ordering::Relaxed);
    let writers = r.writers[slot].load(Ordering::Relaxed);
    let running = published::running_on(super::registry::thread_id());
    let mapper = r.mapper[slot].load(Ordering::Relaxed);
    record(kind, running, mapper);
    let mut line = Line::new();
    line.str("memkit protect: ")
        .str(kind.describe())
        .str(match write {
            Some(true) => " (a write)",
            Some(false) => " (a read)",
            None => "",
        })
        .str(" at ")
        .hex(addr)
        .str(", ");
    if addr >= data {
        line.dec((addr - data) as u64)
            .str(" bytes after the region base");
    } else {
        line.dec((data - addr) as u64)
            .str(" bytes before the region base");
    }
    if let Some(found) = found {
        line.str("\n  found: in the slack beside the region, ")
            .str(found);
    }
    line.str("\n  block: region ")
        .hex(data)
        .str("..")
        .hex(data + maxsize)
        .str(" (maxsize ")
        .dec(maxsize as u64)
        .str(", allocated with offset ")
        .dec(r.offset[slot].load(Ordering::Relaxed) as u64)
        .str(" and size ")
        .dec(r.size[slot].load(Ordering::Relaxed) as u64)
        .str("), mappings alive: ")
        .dec(u64::from(readers))
        .str(" READ, ")
        .dec(u64::from(writers))
        .str(" WRITE\n");
    line.write();
    let mut line = Line::new();
    let mut name = [0u8; 64];
    let n = published::name_into(running, &mut name);
    line.str("  element running: ")
        .str(std::str::from_utf8(&name[..n]).unwrap_or("?"));
    let n = published::name_into(mapper, &mut name);
    line.str(", last mapped by: ")
        .str(std::str::from_utf8(&name[..n]).unwrap_or("?"));
    line.str("\n  thread: ");
    let mut name = [0u8; 16];
    // SAFETY: prctl(PR_GET_NAME) writes at most 16 bytes into the buffer.
    unsafe { libc::prctl(libc::PR_GET_NAME, name.as_mut_ptr()) };
    let n = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    line.str(std::str::from_utf8(&name[..n]).unwrap_or("?"));
    line.str(if found.is_none() {
        "\n  backtrace (the faulting function first):\n"
    } else {
        "\n  backtrace:\n"
    });
    line.write();
    super::backtrace::write_backtrace(found.is_none());
}

/// A violation seen, for the tracer's report: its kind, the charge targets running and that
/// last mapped the block (see `attribution::published`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    pub kind: Kind,
    pub running: u32,
    pub mapper: u32,
}

/// Violations recorded with their elements (the counts by kind go on past it).
pub const MAX_RECORDS: usize = 4096;
static RECORDED: AtomicUsize = AtomicUsize::new(0);
/// Kind + 1 (0: not written yet), stored last.
static RECORD_KIND: [AtomicU8; MAX_RECORDS] = [const { AtomicU8::new(0) }; MAX_RECORDS];
static RECORD_RUNNING: [AtomicU32; MAX_RECORDS] = [const { AtomicU32::new(0) }; MAX_RECORDS];
static RECORD_MAPPER: [AtomicU32; MAX_RECORDS] = [const { AtomicU32::new(0) }; MAX_RECORDS];

fn record(kind: Kind, running: u32, mapper: u32) {
    COUNTS[kind as usize].fetch_add(1, Ordering::Relaxed);
    let i = RECORDED.fetch_add(1, Ordering::AcqRel);
    if i < MAX_RECORDS {
        RECORD_RUNNING[i].store(running, Ordering::Relaxed);
        RECORD_MAPPER[i].store(mapper, Ordering::Relaxed);
        RECORD_KIND[i].store(kind as u8 + 1, Ordering::Release);
    }
}

/// The violations recorded so far, oldest first (the first [`MAX_RECORDS`]).
pub fn records() -> Vec<Record> {
    let n = RECORDED.load(Ordering::Acquire).min(MAX_RECORDS);
    (0..n)
        .filter_map(|i| {
            let kind = RECORD_KIND[i].load(Ordering::Acquire).checked_sub(1)?;
            Some(Record {
                kind: *Kind::ALL.get(usize::from(kind))?,
                running: RECORD_RUNNING[i].load(Ordering::Relaxed),
                mapper: RECORD_MAPPER[i].load(Ordering::Relaxed),
            })
        })
        .collect()
}

/// Passes a fault that is not ours on: to the previous handler, or the default action.
///
/// # Safety
/// The arguments of the signal handler.
unsafe fn chain(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // A fault in the instant between our install and the record of what was there: the
    // default action.
    let prev = PREVIOUS
        .get()
        .map(|p| if sig == libc::SIGBUS { p[1] } else { p[0] });
    let (handler, flags) = prev.map_or((libc::SIG_DFL, 0), |p| (p.sa_sigaction, p.sa_flags));
    if handler == libc::SIG_DFL || handler == libc::SIG_IGN {
        // SAFETY: restores the default action; the instruction faults again and the process
        // gets what it would have got without us.
        unsafe {
            let mut dfl: libc::sigaction = std::mem::zeroed();
            dfl.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(sig, &dfl, std::ptr::null_mut());
        }
    } else if flags & libc::SA_SIGINFO != 0 {
        // SAFETY: the previous handler, called as it asked to be.
        unsafe {
            let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                std::mem::transmute(handler);
            f(sig, info, ctx);
        }
    } else {
        // SAFETY: as above.
        unsafe {
            let f: extern "C" fn(libc::c_int) = std::mem::transmute(handler);
            f(sig);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_violation_is_counted_and_recorded_with_its_elements() {
        let before = violations(Kind::NoMapping);
        record(Kind::NoMapping, 41, 42);
        assert_eq!(violations(Kind::NoMapping), before + 1);
        assert!(records().contains(&Record {
            kind: Kind::NoMapping,
            running: 41,
            mapper: 42
        }));
    }

    #[test]
    fn the_report_line_formats_numbers_without_allocating() {
        let mut line = Line::new();
        line.str("at ")
            .hex(0xdead_beef)
            .str(", ")
            .dec(0)
            .str(" and ")
            .dec(1234);
        assert_eq!(&line.buf[..line.len], b"at 0xdeadbeef, 0 and 1234");
    }
}
