// SPDX-License-Identifier: MPL-2.0
//! Protect mode's reports: the kinds of violation, their counts and records, and the text
//! written to stderr. Async-signal-safe (the fault handler writes reports): buffers on the
//! stack, `write`, `prctl`, atomics, and glibc's `backtrace` (loaded before the first fault);
//! no lock, no allocation.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use super::registry::{ProtectMode, REGISTRY, protect_mode};
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

/// The faulting access, as the kernel tells it (x86-64 only: elsewhere [`Access::Unknown`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Access {
    Read,
    Write,
    /// An instruction fetch: a jump or call into the block.
    Fetch,
    #[cfg_attr(target_arch = "x86_64", allow(dead_code))]
    Unknown,
}

/// How much of a report is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Detail {
    /// Every line, the backtrace included (the report lock held).
    Full,
    /// One line (another report held the report lock).
    Line,
    /// One line without the address, made of fixed strings (on the faulting thread's own
    /// stack, which may have little room: see `stack::claim`).
    Brief,
}

/// Violations seen, by kind.
static COUNTS: [AtomicU64; 5] = [const { AtomicU64::new(0) }; 5];

/// Violations of `kind` seen so far (continue mode goes on after each).
pub fn violations(kind: Kind) -> u64 {
    COUNTS[kind as usize].load(Ordering::Relaxed)
}

/// A fixed buffer that text is appended to without allocating.
struct Line<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> Line<N> {
    fn new() -> Self {
        Line {
            buf: [0; N],
            len: 0,
        }
    }

    /// " (a write)", " (a read)", " (an instruction fetch)", or nothing where the kind of
    /// access is unknown.
    fn access(&mut self, access: Access) -> &mut Self {
        self.str(match access {
            Access::Write => " (a write)",
            Access::Read => " (a read)",
            Access::Fetch => " (an instruction fetch)",
            Access::Unknown => "",
        })
    }

    fn str(&mut self, s: &str) -> &mut Self {
        for &b in s.as_bytes() {
            if self.len < self.buf.len() {
                self.buf[self.len] = b;
                self.len += 1;
            }
        }
        self
    }

    fn dec(&mut self, mut v: u64) -> &mut Self {
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

    fn hex(&mut self, v: usize) -> &mut Self {
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

/// What a report of [`Detail::Line`] says instead of the rest.
const LEAN: &str = "(only this line: another report was being written)";

/// Damage found in the slack of a block's pages (by its canary: `found` says when), reported
/// like a fault; in abort mode the process then aborts.
pub(super) fn report_slack(kind: Kind, addr: usize, slot: usize, found: &str) {
    let claimed = claim_reporting();
    let detail = if claimed { Detail::Full } else { Detail::Line };
    report(kind, Access::Write, addr, slot, Some(found), 0, detail);
    if claimed {
        REPORTING.store(false, Ordering::Release);
    }
    if protect_mode() != ProtectMode::Continue {
        std::process::abort();
    }
}

/// Whether a thread is writing a report (and, in the handler, using the handler's stack).
pub(super) static REPORTING: AtomicBool = AtomicBool::new(false);

/// How long a report waits for [`REPORTING`].
const REPORTING_WAIT_NS: u64 = 2_000_000_000;

/// Takes [`REPORTING`], so that threads reporting at once do not mix their lines; the wait is
/// bounded (a report stuck halfway, on a full pipe, cannot stop the others for good): `false`
/// when it ran out.
pub(super) fn claim_reporting() -> bool {
    let mut start = None;
    loop {
        if REPORTING
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            return true;
        }
        let started = *start.get_or_insert_with(super::stack::now_ns);
        if super::stack::now_ns().saturating_sub(started) > REPORTING_WAIT_NS {
            return false;
        }
        // SAFETY: sched_yield(2) has no arguments.
        unsafe { libc::sched_yield() };
    }
}

/// Reports written at one faulting instruction by default (see
/// [`set_reports_per_instruction`]).
pub const REPORTS_PER_INSTRUCTION: u32 = 10;
static PER_INSTRUCTION: AtomicU32 = AtomicU32::new(REPORTS_PER_INSTRUCTION);
/// Faulting instructions told apart at once (open addressing on the instruction's address;
/// past them, every report is written).
const SITES: usize = 1024;
static SITE_IP: [AtomicUsize; SITES] = [const { AtomicUsize::new(0) }; SITES];
static SITE_SEEN: [AtomicU32; SITES] = [const { AtomicU32::new(0) }; SITES];
static UNWRITTEN: AtomicU64 = AtomicU64::new(0);

/// Sets how many violations at one faulting instruction are reported on stderr (0: all); the
/// ones past it are counted and recorded, not written (a report with its backtrace takes
/// milliseconds: continue mode on a loop that misbehaves at every iteration would crawl).
/// `MEMKIT_PROTECT_REPORTS` sets it from the environment; 10 by default.
pub fn set_reports_per_instruction(n: u32) {
    PER_INSTRUCTION.store(n, Ordering::Relaxed);
}

/// Violations counted and recorded but not written (past [`set_reports_per_instruction`]'s
/// number at their instruction).
pub fn unwritten_reports() -> u64 {
    UNWRITTEN.load(Ordering::Relaxed)
}

/// The violations at instruction `ip` before this one (counting this one in); `None` when
/// the instruction is unknown or the table is full. Async-signal-safe (atomics).
fn seen_at(ip: usize) -> Option<u32> {
    if ip == 0 {
        return None;
    }
    let start = (ip ^ (ip >> 12)).wrapping_mul(0x9E37_79B9) % SITES;
    for k in 0..SITES {
        let i = (start + k) % SITES;
        let cur = SITE_IP[i].load(Ordering::Acquire);
        let mine = cur == ip
            || (cur == 0
                && match SITE_IP[i].compare_exchange(0, ip, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => true,
                    Err(other) => other == ip,
                });
        if mine {
            return Some(SITE_SEEN[i].fetch_add(1, Ordering::Relaxed));
        }
    }
    None
}

/// Writes the report of a violation to stderr and records it. Async-signal-safe: buffers on
/// the stack, `write`, atomics, and glibc's `backtrace` (loaded before the first fault).
/// `found`: where slack damage was found (`None`: at the faulting instruction `ip`, 0 where
/// unknown). Past [`set_reports_per_instruction`]'s number at one instruction, the violation
/// is only counted and recorded.
pub(super) fn report(
    kind: Kind,
    access: Access,
    addr: usize,
    slot: usize,
    found: Option<&str>,
    ip: usize,
    detail: Detail,
) {
    let r = &REGISTRY;
    let running = published::running_on(super::registry::thread_id());
    let mapper = r.mapper[slot].load(Ordering::Relaxed);
    record(kind, running, mapper);
    let cap = PER_INSTRUCTION.load(Ordering::Relaxed);
    let seen = if found.is_none() && cap > 0 {
        seen_at(ip)
    } else {
        None
    };
    if seen.is_some_and(|n| n >= cap) {
        UNWRITTEN.fetch_add(1, Ordering::Relaxed);
        return;
    }
    match detail {
        Detail::Full => write_report(kind, access, addr, slot, found, running, mapper),
        Detail::Line => write_line(kind, access, addr),
        Detail::Brief => write_brief(kind),
    }
    if seen.is_some_and(|n| n + 1 == cap) {
        write_capped(cap);
    }
}

/// Said after the last report written at one instruction.
#[inline(never)]
fn write_capped(cap: u32) {
    let mut line = Line::<160>::new();
    line.str("memkit: protect mode has reported ")
        .dec(u64::from(cap))
        .str(" violations at this instruction: further ones there are counted, not written\n");
    line.write();
}

/// The report of [`Detail::Line`].
#[inline(never)]
fn write_line(kind: Kind, access: Access, addr: usize) {
    let mut line = Line::<160>::new();
    line.str("memkit protect: ")
        .str(kind.describe())
        .access(access)
        .str(" at ")
        .hex(addr)
        .str(" ")
        .str(LEAN)
        .str("\n");
    line.write();
}

/// The report of [`Detail::Brief`]: fixed strings, one `writev`.
#[inline(never)]
fn write_brief(kind: Kind) {
    let parts: [&str; 3] = [
        "memkit protect: ",
        kind.describe(),
        " (only this: the handler's stacks were all busy)\n",
    ];
    let iov = parts.map(|p| libc::iovec {
        iov_base: p.as_ptr() as *mut libc::c_void,
        iov_len: p.len(),
    });
    // SAFETY: writev(2) of static strings.
    unsafe { libc::writev(2, iov.as_ptr(), iov.len() as libc::c_int) };
}

/// Continue mode could not open a block's pages for the access to complete (`errno`: why
/// `mprotect` refused): one line of fixed strings, after the violation's report; the process
/// then dies of the signal.
#[inline(never)]
pub(super) fn cannot_open(errno: libc::c_int) {
    let why = if errno == libc::ENOMEM {
        "ENOMEM: at the limit of memory mappings, vm.max_map_count"
    } else {
        "the system refused the protection change"
    };
    let parts: [&str; 3] = [
        "memkit: protect mode (continue) cannot open the block for the access to complete (",
        why,
        "); the process dies of the signal\n",
    ];
    let iov = parts.map(|p| libc::iovec {
        iov_base: p.as_ptr() as *mut libc::c_void,
        iov_len: p.len(),
    });
    // SAFETY: writev(2) of static strings.
    unsafe { libc::writev(2, iov.as_ptr(), iov.len() as libc::c_int) };
}

/// The report of [`Detail::Full`] (the report lock held).
#[inline(never)]
fn write_report(
    kind: Kind,
    access: Access,
    addr: usize,
    slot: usize,
    found: Option<&str>,
    running: u32,
    mapper: u32,
) {
    let r = &REGISTRY;
    let data = r.data[slot].load(Ordering::Relaxed);
    let maxsize = r.maxsize[slot].load(Ordering::Relaxed);
    let readers = r.readers[slot].load(Ordering::Relaxed);
    let writers = r.writers[slot].load(Ordering::Relaxed);
    let mut line = Line::<512>::new();
    line.str("memkit protect: ")
        .str(kind.describe())
        .access(access)
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
    let mut line = Line::<512>::new();
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
        let mut line = Line::<64>::new();
        line.str("at ")
            .hex(0xdead_beef)
            .str(", ")
            .dec(0)
            .str(" and ")
            .dec(1234);
        assert_eq!(&line.buf[..line.len], b"at 0xdeadbeef, 0 and 1234");
    }
}
