// SPDX-License-Identifier: MPL-2.0
//! The cases of an attack on protect mode (a reviewer who did not write it), each in a child
//! process like the others of `protect.rs`:
//!
//! - signals arriving while the handler works (an `SA_ONSTACK` handler's flood, a sent SIGSEGV
//!   to a previous handler or an ignored one): every violation reported, the process alive;
//! - a report under contention (stderr a full pipe) on threads with 4 KiB alternate stacks;
//! - the limit of memory mappings: continue mode does not loop, legal maps and copies work;
//! - distinct violations by one instruction at one address are each counted; one overrun is
//!   one count, and not blamed on the next region;
//! - a previous handler's `SA_RESETHAND` and `SA_NODEFER`;
//! - a fault inside the report's backtrace, and a call into a block;
//! - the cost of a huge alignment in memory.

use std::ffi::c_void;
use std::os::unix::process::ExitStatusExt;
use std::os::unix::thread::JoinHandleExt;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use gstmemkit::allocator::{AlignedMemory, ProtectMode, ProtectViolation, protect_violations};

use super::{
    alloc, region, run_child, run_child_within, set_protect_mode, total_violations, with_map,
};

// ------------------------------------------------------------------ the parent's tests

fn describe(kinds: &[ProtectViolation]) -> Vec<String> {
    kinds.iter().map(|k| k.describe().to_owned()).collect()
}

#[test]
fn an_onstack_signal_flood_during_reports_leaves_every_report_and_the_process() {
    let out = run_child("attack-nested-usr1");
    assert!(out.status.success(), "{}", out.tail());
    assert!(out.stdout.contains("200 violations"), "{}", out.tail());
    assert_eq!(out.reports().len(), 200, "{}", out.tail());
}

#[test]
fn a_sigsegv_sent_during_reports_goes_to_the_previous_handler_as_sent() {
    let out = run_child("attack-nested-segv");
    assert!(out.status.success(), "{}", out.tail());
    assert!(out.stdout.contains("200 violations"), "{}", out.tail());
    assert_eq!(out.reports().len(), 200, "{}", out.tail());
}

#[test]
fn a_sigsegv_sent_from_another_process_stays_ignored_during_reports() {
    let out = run_child("attack-ignored-kill");
    assert!(out.status.success(), "{}", out.tail());
    assert!(out.stdout.contains("200 violations"), "{}", out.tail());
}

#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "the handler's stack use is that of an optimised build (meson runs cargo test --release)"
)]
fn reports_under_contention_use_little_of_a_4_kib_alternate_stack() {
    let out = run_child("attack-contended");
    assert!(out.status.success(), "{}", out.tail());
    let used: Vec<(usize, usize)> = out
        .stdout
        .lines()
        .filter_map(|l| {
            let rest = l.split("alternate stack used by the handler: ").nth(1)?;
            let handler = rest.split(' ').next()?.parse().ok()?;
            let frame = rest
                .rsplit(' ')
                .next()?
                .trim_end_matches(')')
                .parse()
                .ok()?;
            Some((handler, frame))
        })
        .collect();
    assert_eq!(used.len(), CONTENDED, "{}", out.tail());
    for (handler, frame) in used {
        assert!(
            handler <= 700,
            "the handler used {handler} bytes (the kernel {frame})"
        );
    }
    assert!(out.stdout.contains("6 violations"), "{}", out.tail());
}

#[test]
fn continue_mode_at_the_mapping_limit_dies_instead_of_looping() {
    let out = run_child_within("attack-maploop", Duration::from_secs(120));
    assert_eq!(out.status.signal(), Some(libc::SIGSEGV), "{}", out.tail());
    assert_eq!(
        out.reports(),
        describe(&[ProtectViolation::NoMapping]),
        "{}",
        out.tail()
    );
    assert!(
        out.stderr.contains("cannot open the block"),
        "{}",
        out.tail()
    );
    assert!(!out.stdout.contains("survived"), "{}", out.tail());
}

#[test]
fn legal_maps_and_copies_work_at_the_mapping_limit() {
    let out = run_child_within("attack-maplimit", Duration::from_secs(120));
    assert!(out.status.success(), "{}", out.tail());
    assert!(
        out.stdout
            .contains("0 of 300 WRITE maps failed, 0 of 20 copies failed"),
        "{}",
        out.tail()
    );
    assert_eq!(out.reports(), Vec::<String>::new(), "{}", out.tail());
    assert_eq!(
        out.stderr
            .matches("at the limit of memory mappings")
            .count(),
        1,
        "{}",
        out.tail()
    );
}

#[test]
fn continue_mode_writes_ten_reports_at_one_instruction_and_counts_the_rest() {
    let out = run_child("attack-repeated");
    assert!(out.status.success(), "{}", out.tail());
    assert!(
        out.stdout.contains("50 violations, 40 not written"),
        "{}",
        out.tail()
    );
    assert_eq!(
        out.reports(),
        describe(&[ProtectViolation::WriteThroughRead; 10]),
        "{}",
        out.tail()
    );
    assert_eq!(
        out.stderr
            .matches("reported 10 violations at this instruction: further ones there are counted")
            .count(),
        1,
        "{}",
        out.tail()
    );
}

#[test]
fn short_lived_blocks_in_quick_succession_all_stay_protected() {
    let out = run_child("attack-churn");
    assert!(out.status.success(), "{}", out.tail());
    assert!(
        out.stdout.contains("0 blocks unprotected"),
        "{}",
        out.tail()
    );
    assert!(
        !out.stderr.contains("at the limit of memory mappings"),
        "{}",
        out.tail()
    );
}

#[test]
fn distinct_violations_by_one_instruction_at_one_address_are_each_counted() {
    let out = run_child("attack-dedupe");
    assert!(out.status.success(), "{}", out.tail());
    assert_eq!(
        out.reports(),
        describe(&[
            ProtectViolation::WriteThroughRead,
            ProtectViolation::WriteThroughRead,
            ProtectViolation::AfterFree,
        ]),
        "{}",
        out.tail()
    );
}

#[test]
fn an_overrun_through_the_slack_into_the_guard_page_is_one_violation() {
    let out = run_child("attack-overrun-slack");
    assert!(out.status.success(), "{}", out.tail());
    assert_eq!(
        out.reports(),
        describe(&[ProtectViolation::PastMaxsize]),
        "{}",
        out.tail()
    );
}

#[test]
fn an_overrun_into_the_next_region_is_not_blamed_on_its_block() {
    let out = run_child("attack-overrun-next");
    assert!(out.status.success(), "{}", out.tail());
    assert_eq!(
        out.reports(),
        describe(&[ProtectViolation::PastMaxsize]),
        "{}",
        out.tail()
    );
}

#[test]
fn a_previous_handler_with_sa_resethand_is_reset_not_protect_mode() {
    let out = run_child("attack-resethand");
    // The second foreign fault finds the default action, as it would without memkit.
    assert_eq!(out.status.signal(), Some(libc::SIGSEGV), "{}", out.tail());
    assert!(out.stdout.contains("probe repaired"), "{}", out.tail());
    assert!(out.stdout.contains("violation reported"), "{}", out.tail());
    assert!(!out.stdout.contains("survived"), "{}", out.tail());
    assert_eq!(
        out.reports(),
        describe(&[ProtectViolation::NoMapping]),
        "{}",
        out.tail()
    );
}

#[test]
fn a_previous_handler_with_sa_nodefer_gets_its_nested_fault() {
    let out = run_child("attack-nodefer");
    assert!(out.status.success(), "{}", out.tail());
    assert!(
        out.stdout.contains("nested fault repaired"),
        "{}",
        out.tail()
    );
}

#[test]
fn a_fault_in_the_backtrace_stops_the_backtrace_not_the_process() {
    let out = run_child("attack-badframe");
    assert!(out.status.success(), "{}", out.tail());
    assert!(out.stdout.contains("survived"), "{}", out.tail());
    assert_eq!(
        out.reports(),
        describe(&[ProtectViolation::WriteThroughRead]),
        "{}",
        out.tail()
    );
    assert!(out.stderr.contains("backtrace stopped"), "{}", out.tail());
}

#[test]
fn a_call_into_a_block_is_reported_once_then_dies() {
    let out = run_child("attack-exec");
    assert_eq!(out.status.signal(), Some(libc::SIGSEGV), "{}", out.tail());
    assert_eq!(
        out.reports(),
        describe(&[ProtectViolation::NoMapping]),
        "{}",
        out.tail()
    );
    assert!(!out.stdout.contains("survived"), "{}", out.tail());
}

#[test]
fn a_huge_alignment_costs_what_the_region_costs() {
    let out = run_child("attack-bigalign");
    assert!(out.status.success(), "{}", out.tail());
    let grew: usize = out
        .stdout
        .split("resident memory grew by ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no figure\n{}", out.tail()));
    assert!(grew < 8 << 20, "{}", out.tail());
}

// ------------------------------------------------------------------ the child's side

/// Runs the attack case `case` (without its `attack-` prefix) in this child process.
pub fn child(case: &str) {
    match case {
        "nested-usr1" => nested_usr1(),
        "nested-segv" => nested_segv(),
        "ignored-kill" => ignored_kill(),
        "contended" => contended(),
        "maploop" => maploop(),
        "maplimit" => maplimit(),
        "churn" => churn(),
        "repeated" => repeated(),
        "dedupe" => dedupe(),
        "overrun-slack" => overrun_slack(),
        "overrun-next" => overrun_next(),
        "resethand" => resethand(),
        "nodefer" => nodefer(),
        "badframe" => badframe(),
        "exec" => exec(),
        "bigalign" => bigalign(),
        _ => panic!("unknown attack case {case}"),
    }
}

/// One write by one instruction (the same one at every call).
#[inline(never)]
fn poke(addr: usize, v: u8) {
    // SAFETY: deliberately illegal where the cases call it: protect mode stops it at the
    // instruction (continue mode then lets it complete on pages of our own block).
    unsafe { ptr::write_volatile(addr as *mut u8, v) }
}

/// A write through a READ mapping of a new block of 100 bytes, at byte `i % 64`.
fn write_through_read(i: usize) {
    let mem = alloc(100, 0, 0);
    with_map(&mem, gst::ffi::GST_MAP_READ, |data, _| {
        poke(data as usize + i % 64, 1)
    });
}

/// An alternate signal stack of `size` bytes for this thread (an anonymous mapping with an
/// inaccessible page below it), filled with [`STACK_FILL`].
struct AltStack {
    map: *mut c_void,
    len: usize,
    stack: *mut u8,
    size: usize,
}

const STACK_FILL: u8 = 0xA5;

impl AltStack {
    fn new(size: usize) -> AltStack {
        // SAFETY: a new anonymous mapping; its lowest page made inaccessible.
        unsafe {
            let len = size + 4096;
            let map = libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(map, libc::MAP_FAILED);
            libc::mprotect(map, 4096, libc::PROT_NONE);
            let stack = (map as *mut u8).add(4096);
            let ss = libc::stack_t {
                ss_sp: stack.cast(),
                ss_flags: 0,
                ss_size: size,
            };
            assert_eq!(libc::sigaltstack(&ss, ptr::null_mut()), 0);
            let alt = AltStack {
                map,
                len,
                stack,
                size,
            };
            alt.fill();
            alt
        }
    }

    fn fill(&self) {
        // SAFETY: our mapping, not in use (no signal handler runs on it now).
        unsafe { ptr::write_bytes(self.stack, STACK_FILL, self.size) };
    }

    /// Bytes of it that were written since the last fill.
    fn used(&self) -> usize {
        // SAFETY: as above.
        let untouched = (0..self.size)
            .position(|i| unsafe { *self.stack.add(i) } != STACK_FILL)
            .unwrap_or(self.size);
        self.size - untouched
    }
}

impl Drop for AltStack {
    fn drop(&mut self) {
        let off = libc::stack_t {
            ss_sp: ptr::null_mut(),
            ss_flags: libc::SS_DISABLE,
            ss_size: 0,
        };
        // SAFETY: the thread is not on this stack (no handler runs); then our mapping goes.
        unsafe {
            libc::sigaltstack(&off, ptr::null_mut());
            libc::munmap(self.map, self.len);
        }
    }
}

/// Installs `handler` (an `SA_SIGINFO` one) for `sig` with `flags`.
fn install(sig: libc::c_int, handler: usize, flags: libc::c_int) {
    // SAFETY: a valid handler for the signal.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler;
        action.sa_flags = flags;
        libc::sigemptyset(&mut action.sa_mask);
        assert_eq!(libc::sigaction(sig, &action, ptr::null_mut()), 0);
    }
}

const VIOLATIONS: usize = 200;

/// A worker making [`VIOLATIONS`] writes through READ mappings on a thread with a 64 KiB
/// alternate stack, while `send` signals it (given its pthread and kernel thread id) until it
/// is done. Checks that each is counted.
fn violations_while_signalled(send: impl Fn(libc::pthread_t, i32)) {
    // Every report written, so that signals arrive while reports are being written.
    gstmemkit::allocator::set_reports_per_instruction(0);
    let done = Arc::new(AtomicBool::new(false));
    let tid = Arc::new(AtomicI32::new(0));
    let worker = {
        let (done, tid) = (done.clone(), tid.clone());
        std::thread::spawn(move || {
            let _alt = AltStack::new(64 << 10);
            // SAFETY: gettid(2) cannot fail.
            tid.store(unsafe { libc::gettid() }, Ordering::Release);
            for i in 0..VIOLATIONS {
                write_through_read(i);
            }
            done.store(true, Ordering::Release);
        })
    };
    while tid.load(Ordering::Acquire) == 0 {
        std::thread::yield_now();
    }
    let thread = worker.as_pthread_t();
    while !done.load(Ordering::Acquire) {
        send(thread, tid.load(Ordering::Relaxed));
        std::thread::sleep(Duration::from_micros(200));
    }
    worker.join().unwrap();
    let n = protect_violations(ProtectViolation::WriteThroughRead);
    println!("{n} violations");
    assert_eq!(n, VIOLATIONS as u64);
}

static USR1: AtomicUsize = AtomicUsize::new(0);

extern "C" fn on_usr1(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut c_void) {
    // A kilobyte of the stack it runs on, written.
    let mut buf = [0u8; 1024];
    for (i, b) in buf.iter_mut().enumerate() {
        // SAFETY: our own local.
        unsafe { ptr::write_volatile(b, i as u8) };
    }
    USR1.fetch_add(1, Ordering::Relaxed);
}

/// An `SA_ONSTACK` handler (as Go's runtime installs all of its handlers) signalled at a high
/// rate on a thread making violations.
fn nested_usr1() {
    set_protect_mode(ProtectMode::Continue);
    install(
        libc::SIGUSR1,
        on_usr1 as *const () as usize,
        libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_RESTART,
    );
    drop(alloc(10, 0, 0));
    violations_while_signalled(|thread, _| {
        // SAFETY: a live thread of ours (joined only after the last call).
        unsafe { libc::pthread_kill(thread, libc::SIGUSR1) };
    });
    println!("SIGUSR1 handled {} times", USR1.load(Ordering::Relaxed));
}

static SENT: AtomicUsize = AtomicUsize::new(0);

extern "C" fn counting_handler(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut c_void) {
    // SAFETY: the kernel's siginfo; _exit(2) is async-signal-safe.
    unsafe {
        if (*info).si_code <= 0 {
            SENT.fetch_add(1, Ordering::Relaxed);
        } else {
            // A fault this handler does not expect.
            libc::_exit(42);
        }
    }
}

/// A previous SIGSEGV handler counts the SIGSEGVs sent to the thread making violations.
fn nested_segv() {
    install(
        libc::SIGSEGV,
        counting_handler as *const () as usize,
        libc::SA_SIGINFO | libc::SA_ONSTACK,
    );
    set_protect_mode(ProtectMode::Continue);
    drop(alloc(10, 0, 0));
    violations_while_signalled(|_, tid| {
        // SAFETY: a plain system call.
        unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, libc::SIGSEGV) };
    });
    println!(
        "sent SIGSEGV handled {} times",
        SENT.load(Ordering::Relaxed)
    );
    assert!(SENT.load(Ordering::Relaxed) > 0);
}

/// SIGSEGV ignored before memkit; another process sends it to the thread making violations.
fn ignored_kill() {
    // SAFETY: plain libc calls with valid arguments.
    unsafe {
        let mut ign: libc::sigaction = std::mem::zeroed();
        ign.sa_sigaction = libc::SIG_IGN;
        libc::sigaction(libc::SIGSEGV, &ign, ptr::null_mut());
    }
    set_protect_mode(ProtectMode::Continue);
    drop(alloc(10, 0, 0));
    let killer = std::cell::Cell::new(0);
    violations_while_signalled(|_, tid| {
        if killer.get() != 0 {
            return;
        }
        // SAFETY: the child makes only async-signal-safe calls (tgkill, nanosleep, _exit).
        unsafe {
            let parent = libc::getpid();
            let pid = libc::fork();
            if pid == 0 {
                let pause = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 300_000,
                };
                while libc::syscall(libc::SYS_tgkill, parent, tid, libc::SIGSEGV) == 0 {
                    libc::nanosleep(&pause, ptr::null_mut());
                }
                libc::_exit(0);
            }
            killer.set(pid);
        }
    });
    // SAFETY: our own child process.
    unsafe {
        libc::kill(killer.get(), libc::SIGKILL);
        libc::waitpid(killer.get(), ptr::null_mut(), 0);
    }
}

/// Threads of [`contended`].
const CONTENDED: usize = 6;
static FRAME_AT: AtomicUsize = AtomicUsize::new(0);
static PROBING: std::sync::Mutex<()> = std::sync::Mutex::new(());

extern "C" fn frame_probe(_: libc::c_int) {
    let local = 0u8;
    FRAME_AT.store(&raw const local as usize, Ordering::Relaxed);
}

/// Stderr a full pipe, so that the first report holds on; meanwhile [`CONTENDED`] threads
/// with a 4 KiB alternate stack each make a violation.
fn contended() {
    set_protect_mode(ProtectMode::Continue);
    drop(alloc(10, 0, 0));
    install(
        libc::SIGUSR2,
        frame_probe as *const () as usize,
        libc::SA_ONSTACK,
    );
    let mut fds = [0; 2];
    // SAFETY: plain system calls on descriptors of ours; fd 2 is put back below.
    let saved = unsafe {
        assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
        let saved = libc::dup(2);
        libc::dup2(fds[1], 2);
        let fl = libc::fcntl(2, libc::F_GETFL);
        libc::fcntl(2, libc::F_SETFL, fl | libc::O_NONBLOCK);
        let junk = [b'.'; 4096];
        while libc::write(2, junk.as_ptr().cast(), junk.len()) > 0 {}
        while libc::write(2, junk.as_ptr().cast(), 1) > 0 {}
        libc::fcntl(2, libc::F_SETFL, fl);
        saved
    };
    let go = Arc::new(Barrier::new(CONTENDED));
    let workers: Vec<_> = (0..CONTENDED)
        .map(|t| {
            let go = go.clone();
            std::thread::spawn(move || {
                let alt = AltStack::new(4096);
                // The kernel's own signal frame on this stack, with a handler that does
                // nothing (one thread at a time: the probe reports through a static).
                let frame = {
                    let _one = PROBING.lock().unwrap();
                    // SAFETY: a plain libc call.
                    unsafe { libc::raise(libc::SIGUSR2) };
                    alt.stack as usize + alt.size - FRAME_AT.load(Ordering::Relaxed)
                };
                alt.fill();
                let mem = alloc(100, 0, 0);
                with_map(&mem, gst::ffi::GST_MAP_READ, |data, _| {
                    go.wait();
                    poke(data as usize + t, 1);
                });
                let used = alt.used();
                (used.saturating_sub(frame), used, frame)
            })
        })
        .collect();
    // Every violation counted (each thread counts before it writes to the pipe).
    let start = Instant::now();
    while total_violations() < CONTENDED as u64 && start.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(10));
    }
    // Drained: the reports go on.
    let drain = std::thread::spawn(move || {
        let mut text = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: our pipe's read end, into our buffer.
            let n = unsafe { libc::read(fds[0], buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
            text.extend_from_slice(&buf[..n as usize]);
        }
        text
    });
    let used: Vec<_> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    // SAFETY: fd 2 back to what it was; the pipe's write end closed, so the drain ends.
    unsafe {
        libc::dup2(saved, 2);
        libc::close(saved);
        libc::close(fds[1]);
    }
    let text = drain.join().unwrap();
    let text = String::from_utf8_lossy(&text);
    eprint!("{}", text.trim_start_matches('.'));
    for (handler, total, frame) in used {
        println!(
            "alternate stack used by the handler: {handler} bytes ({total} with the kernel's {frame})"
        );
    }
    println!("{} violations", total_violations());
}

/// Uses up the process's memory mappings (`vm.max_map_count`), but about `leave` of them.
fn consume_mappings(leave: usize) {
    let page = 4096;
    // SAFETY: a reservation of ours; only its protections change.
    unsafe {
        let n = 140_000;
        let base = libc::mmap(
            ptr::null_mut(),
            n * page,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        ) as usize;
        assert_ne!(base as *mut c_void, libc::MAP_FAILED);
        let mut i = 1;
        while i < n && libc::mprotect((base + i * page) as *mut _, page, libc::PROT_READ) == 0 {
            i += 2;
        }
        // Single splits at the end of mappings of their own, till none is left.
        for _ in 0..8 {
            let x = libc::mmap(
                ptr::null_mut(),
                4 * page,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            if x == libc::MAP_FAILED {
                break;
            }
            let mut x = x as usize;
            while libc::mprotect(x as *mut _, page, libc::PROT_READ) == 0 {
                x += 2 * page;
            }
        }
        // Give `leave` back: each page closed again merges two mappings away.
        let mut j = i;
        for _ in 0..leave.div_ceil(2) {
            if j < 3 {
                break;
            }
            j -= 2;
            libc::mprotect((base + j * page) as *mut _, page, libc::PROT_NONE);
        }
    }
}

/// Continue mode: a violation (a write with no mapping alive) at `vm.max_map_count`, on a
/// block in the middle of its batch of regions.
fn maploop() {
    set_protect_mode(ProtectMode::Continue);
    let (_a, _b) = (alloc(100, 0, 0), alloc(100, 0, 0));
    let mut mem = alloc(100, 0, 0);
    let addr = mem
        .get_mut()
        .unwrap()
        .map_writable()
        .unwrap()
        .as_slice()
        .as_ptr() as usize;
    consume_mappings(0);
    eprintln!("at the limit; now the violation");
    poke(addr, 1);
    println!("survived");
}

/// Abort mode: legal maps of new blocks and copies of older ones while the process's own
/// mappings leave about 100 of `vm.max_map_count`.
fn maplimit() {
    set_protect_mode(ProtectMode::Abort);
    let olds: Vec<AlignedMemory> = (0..20)
        .map(|i| {
            let mut m = alloc(1000, 0, 0);
            m.get_mut().unwrap().map_writable().unwrap().as_mut_slice()[0] = i as u8;
            m
        })
        .collect();
    consume_mappings(100);
    let mems: Vec<AlignedMemory> = (0..300).map(|_| alloc(100, 0, 0)).collect();
    let mut failed = 0;
    let mut infos = Vec::new();
    for mem in &mems {
        let mut info = std::mem::MaybeUninit::<gst::ffi::GstMapInfo>::zeroed();
        let raw = mem.as_ptr() as *mut gst::ffi::GstMemory;
        // SAFETY: a live memory; unmapped below with the same info.
        if unsafe { gst::ffi::gst_memory_map(raw, info.as_mut_ptr(), gst::ffi::GST_MAP_WRITE) } == 0
        {
            failed += 1;
            continue;
        }
        // SAFETY: mapped above.
        let info = unsafe { info.assume_init() };
        // SAFETY: the mapping allows writes of its size.
        unsafe { ptr::write_bytes(info.data, 1, info.size) };
        infos.push((raw, info));
    }
    let mut copies_failed = 0;
    for (i, old) in olds.iter().enumerate() {
        match old.copy_range(..) {
            Ok(copy) => assert_eq!(copy.map_readable().unwrap().as_slice()[0], i as u8),
            Err(_) => copies_failed += 1,
        }
    }
    for (raw, mut info) in infos {
        // SAFETY: mapped above, unmapped once.
        unsafe { gst::ffi::gst_memory_unmap(raw, &mut info) };
    }
    println!(
        "{failed} of 300 WRITE maps failed, {copies_failed} of 20 copies failed, {} blocks \
         unprotected",
        gstmemkit::allocator::aligned::unprotected()
    );
}

/// Continue mode: 50 writes through READ mappings of new blocks by one instruction.
fn repeated() {
    set_protect_mode(ProtectMode::Continue);
    for i in 0..50 {
        write_through_read(i);
    }
    println!(
        "{} violations, {} not written",
        total_violations(),
        gstmemkit::allocator::unwritten_reports()
    );
}

/// Abort mode, with 12,000 memory mappings of the process's own (counting them takes a few
/// milliseconds): 60,000 blocks of 100 bytes, each allocated, mapped for writing, unmapped and
/// freed in turn (the quarantine fills, regions leave it and are reused or unmapped), as fast
/// as they go.
fn churn() {
    let page = 4096;
    // SAFETY: a reservation of ours; only its protections change.
    unsafe {
        let n = 12_000;
        let base = libc::mmap(
            ptr::null_mut(),
            n * page,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        ) as usize;
        assert_ne!(base as *mut c_void, libc::MAP_FAILED);
        for i in (1..n).step_by(2) {
            libc::mprotect((base + i * page) as *mut _, page, libc::PROT_READ);
        }
    }
    set_protect_mode(ProtectMode::Abort);
    for i in 0..60_000 {
        let mut m = alloc(100, 0, 0);
        m.get_mut().unwrap().map_writable().unwrap().as_mut_slice()[i % 100] = 1;
    }
    println!(
        "{} blocks unprotected",
        gstmemkit::allocator::aligned::unprotected()
    );
}

/// Continue mode: three distinct violations by one instruction at one address.
fn dedupe() {
    set_protect_mode(ProtectMode::Continue);
    let mem = alloc(100, 0, 0);
    let mut addr = 0;
    with_map(&mem, gst::ffi::GST_MAP_READ, |data, _| {
        addr = data as usize;
        poke(addr, 1);
    });
    with_map(&mem, gst::ffi::GST_MAP_READ, |_, _| poke(addr, 2));
    drop(mem);
    poke(addr, 3);
}

/// Writes `n` bytes from `addr` one at a time (a linear overrun, one instruction).
#[inline(never)]
fn overrun(addr: usize, n: usize) {
    for i in 0..n {
        // SAFETY: deliberately past the block, as the cases say.
        unsafe { ptr::write_volatile((addr + i) as *mut u8, 7) };
    }
}

/// Continue mode: one loop writes 40 bytes past maxsize under a WRITE mapping, through the
/// slack (prefix 10, alignment 64, 100 bytes) into the guard page.
fn overrun_slack() {
    set_protect_mode(ProtectMode::Continue);
    let mut mem = alloc(100, 10, 63);
    let (base, maxsize) = region(&mem);
    assert_ne!((base + maxsize) % 4096, 0, "slack after the region");
    assert!(
        (base + maxsize) % 4096 > 4096 - 40,
        "the overrun reaches the guard page"
    );
    {
        let _map = mem.get_mut().unwrap().map_writable().unwrap();
        overrun(base, maxsize + 40);
    }
    drop(mem);
}

/// Continue mode: one loop writes from a block of 4096 bytes (its region fills its page)
/// through its guard page and 204 bytes on, into the next region (another block's).
fn overrun_next() {
    set_protect_mode(ProtectMode::Continue);
    let mut mems: Vec<AlignedMemory> = (0..16).map(|_| alloc(4096, 0, 0)).collect();
    let bases: Vec<usize> = mems.iter().map(|m| region(m).0).collect();
    // A block whose next region is another's: its region's end is the next one's start.
    let i = (0..bases.len())
        .find(|&i| bases.contains(&(bases[i] + 3 * 4096)))
        .expect("two neighbouring regions");
    {
        let _map = mems[i].get_mut().unwrap().map_writable().unwrap();
        overrun(bases[i], 4096 + 4096 + 204);
    }
    drop(mems);
}

/// A page of someone else's (not protect mode's), inaccessible until its owner's handler
/// opens it.
fn foreign_page() -> usize {
    // SAFETY: a new anonymous page of ours.
    unsafe {
        let page = libc::mmap(
            ptr::null_mut(),
            4096,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(page, libc::MAP_FAILED);
        page as usize
    }
}

static PROBE_PAGE: AtomicUsize = AtomicUsize::new(0);
static NESTED_PAGE: AtomicUsize = AtomicUsize::new(0);

extern "C" fn one_shot_handler(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut c_void) {
    let page = PROBE_PAGE.load(Ordering::Relaxed);
    // SAFETY: the kernel's siginfo; mprotect(2) on our own page.
    unsafe {
        if (*info).si_addr() as usize & !4095 == page {
            libc::mprotect(page as *mut _, 4096, libc::PROT_READ);
        } else {
            libc::_exit(43);
        }
    }
}

/// A one-shot handler (`SA_RESETHAND`) installed before protect mode's repairs one foreign
/// fault; then a violation is reported; then a second foreign fault finds the default action.
fn resethand() {
    PROBE_PAGE.store(foreign_page(), Ordering::Relaxed);
    install(
        libc::SIGSEGV,
        one_shot_handler as *const () as usize,
        libc::SA_SIGINFO | libc::SA_RESETHAND | libc::SA_NODEFER,
    );
    set_protect_mode(ProtectMode::Continue);
    let mem = alloc(100, 0, 0);
    // SAFETY: a read of the foreign page, which its handler opens.
    let _ = unsafe { ptr::read_volatile(PROBE_PAGE.load(Ordering::Relaxed) as *const u8) };
    println!("probe repaired");
    let addr = mem.map_readable().unwrap().as_slice().as_ptr() as usize;
    poke(addr, 1);
    assert_eq!(protect_violations(ProtectViolation::NoMapping), 1);
    println!("violation reported");
    let second = foreign_page();
    // SAFETY: a foreign fault with the default action: the process dies of it.
    let _ = unsafe { ptr::read_volatile(second as *const u8) };
    println!("survived");
}

static NESTED_DEPTH: AtomicUsize = AtomicUsize::new(0);

extern "C" fn nesting_handler(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut c_void) {
    let (outer, inner) = (
        PROBE_PAGE.load(Ordering::Relaxed),
        NESTED_PAGE.load(Ordering::Relaxed),
    );
    // SAFETY: the kernel's siginfo; reads and mprotect(2) of our own pages.
    unsafe {
        let page = (*info).si_addr() as usize & !4095;
        if page == outer && NESTED_DEPTH.fetch_add(1, Ordering::Relaxed) == 0 {
            // A fault inside the handler: it reaches the handler again (SA_NODEFER).
            let _ = ptr::read_volatile(inner as *const u8);
            libc::mprotect(outer as *mut _, 4096, libc::PROT_READ);
        } else if page == inner {
            libc::mprotect(inner as *mut _, 4096, libc::PROT_READ);
        } else {
            libc::_exit(43);
        }
    }
}

/// A previous handler with `SA_NODEFER` faults inside itself: the nested fault reaches it.
fn nodefer() {
    PROBE_PAGE.store(foreign_page(), Ordering::Relaxed);
    NESTED_PAGE.store(foreign_page(), Ordering::Relaxed);
    install(
        libc::SIGSEGV,
        nesting_handler as *const () as usize,
        libc::SA_SIGINFO | libc::SA_NODEFER,
    );
    set_protect_mode(ProtectMode::Continue);
    let _mem = alloc(100, 0, 0);
    // SAFETY: a read of the foreign page, which its handler opens.
    let _ = unsafe { ptr::read_volatile(PROBE_PAGE.load(Ordering::Relaxed) as *const u8) };
    println!("nested fault repaired");
}

#[cfg(target_arch = "x86_64")]
std::arch::global_asm!(
    ".pushsection .text.memkit_test_bad_frame_poke,\"ax\",@progbits",
    ".globl memkit_test_bad_frame_poke",
    ".type memkit_test_bad_frame_poke,@function",
    // (addr: rdi): writes 1 there while its own return address reads 0x10, as after a stack
    // overflow that overwrote a saved frame; its unwind information is valid, the frame it
    // points to is not.
    "memkit_test_bad_frame_poke:",
    ".cfi_startproc",
    "push rbp",
    ".cfi_def_cfa_offset 16",
    ".cfi_offset rbp, -16",
    "mov rbp, rsp",
    ".cfi_def_cfa_register rbp",
    "push rbx",
    ".cfi_offset rbx, -24",
    "mov rbx, [rbp + 8]",
    "mov qword ptr [rbp + 8], 0x10",
    "mov byte ptr [rdi], 1",
    "mov [rbp + 8], rbx",
    "pop rbx",
    "pop rbp",
    ".cfi_def_cfa rsp, 8",
    "ret",
    ".cfi_endproc",
    ".size memkit_test_bad_frame_poke, .-memkit_test_bad_frame_poke",
    ".popsection",
);

#[cfg(target_arch = "x86_64")]
unsafe extern "C" {
    fn memkit_test_bad_frame_poke(addr: *mut u8);
}

/// Continue mode: a violation in a function whose caller's frame is damaged.
fn badframe() {
    set_protect_mode(ProtectMode::Continue);
    let mem = alloc(100, 0, 0);
    with_map(&mem, gst::ffi::GST_MAP_READ, |data, _| {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a write through a READ mapping, which continue mode lets complete.
        unsafe {
            memkit_test_bad_frame_poke(data)
        };
        #[cfg(not(target_arch = "x86_64"))]
        poke(data as usize, 1);
    });
    println!("survived");
}

/// Continue mode: a call through a pointer into a block (a corrupted function pointer).
/// Without memkit the process dies of SIGSEGV (the heap is not executable).
fn exec() {
    set_protect_mode(ProtectMode::Continue);
    let mut mem = alloc(100, 0, 0);
    let addr = {
        let mut map = mem.get_mut().unwrap().map_writable().unwrap();
        map.as_mut_slice()[0] = 0xc3; // ret
        map.as_slice().as_ptr() as usize
    };
    // SAFETY: deliberately a call into data: it faults.
    let f: extern "C" fn() = unsafe { std::mem::transmute(addr) };
    f();
    println!("survived");
    drop(mem);
}

/// Resident memory of this process, in bytes.
fn resident() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = statm.split(' ').nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// Abort mode: blocks of 100 bytes aligned to 16 MiB, each mapped for writing ten times.
fn bigalign() {
    set_protect_mode(ProtectMode::Abort);
    drop(alloc(10, 0, 0));
    let before = resident();
    let mems: Vec<AlignedMemory> = (0..8)
        .map(|i| {
            let mut m = alloc(100, 0, (16 << 20) - 1);
            for k in 0..10u8 {
                m.get_mut().unwrap().map_writable().unwrap().as_mut_slice()[i] = k;
            }
            m
        })
        .collect();
    println!(
        "resident memory grew by {} bytes",
        resident().saturating_sub(before)
    );
    drop(mems);
}
