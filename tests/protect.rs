// SPDX-License-Identifier: MPL-2.0
//! Protect mode under threads and signals. The mode and the fault handler belong to the
//! process, and a violation in abort mode kills it, so each case runs in a child process: this
//! binary runs itself again with `MEMKIT_PROTECT_CHILD=<case>` (the `child_process` test does
//! the case's work there and nothing otherwise), and the parent checks how the child ended and
//! what it wrote.
//!
//! - Legal work on many threads (maps READ and WRITE of the same blocks, copies, shares,
//!   resizes, frees, in random interleavings) never reports, in abort and continue mode.
//! - Each injected illegal access is reported exactly once: in continue mode, with the legal
//!   work going on beside it, every kind in turn; in abort mode, the process dies of SIGSEGV
//!   after one report.
//! - A SIGSEGV/SIGBUS sent with `kill`, `raise` or `tgkill` is not swallowed: the process dies
//!   of it, or it goes to the handler that was there before ours.
//! - The handler reports on a thread whose alternate signal stack is 4 KiB.

#[path = "protect/attacks.rs"]
mod attacks;
mod common;

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus, Stdio};
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gstmemkit::allocator::{
    AlignedMemory, ProtectMode, ProtectViolation, aligned_allocator, protect_violations,
    set_protect_mode,
};

const CHILD: &str = "MEMKIT_PROTECT_CHILD";
/// How long a child may take (a busy two-core machine; the cases take seconds).
const DEADLINE: Duration = Duration::from_secs(300);

struct Outcome {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Outcome {
    /// The kinds of the reports the child wrote, in order.
    fn reports(&self) -> Vec<String> {
        self.stderr
            .lines()
            .filter_map(|l| l.strip_prefix("memkit protect: "))
            .map(|l| {
                let kind = l.split(" (").next().unwrap_or(l);
                kind.split(" at 0x").next().unwrap_or(kind).to_owned()
            })
            .collect()
    }

    fn tail(&self) -> String {
        let s = &self.stderr;
        let from = s.len().saturating_sub(3000);
        let from = (from..s.len())
            .find(|&i| s.is_char_boundary(i))
            .unwrap_or(0);
        format!(
            "status {:?}\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout,
            &s[from..]
        )
    }
}

/// Runs `case` in a child process of this test binary, within [`DEADLINE`].
fn run_child(case: &str) -> Outcome {
    run_child_within(case, DEADLINE)
}

/// Runs `case` in a child process of this test binary, within `deadline`.
fn run_child_within(case: &str, deadline: Duration) -> Outcome {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir();
    let stem = format!(
        "memkit-protect-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    let (out_path, err_path) = (
        dir.join(format!("{stem}.out")),
        dir.join(format!("{stem}.err")),
    );
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "child_process",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, case)
        .env_remove("MEMKIT_GUARD")
        .env_remove("GST_TRACERS")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let mut err = String::new();
            let _ = std::fs::File::open(&err_path).map(|mut f| f.read_to_string(&mut err));
            let tail: String = err
                .chars()
                .rev()
                .take(3000)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            panic!("case {case}: no end within {deadline:?}\n{tail}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let read =
        |p: &std::path::Path| String::from_utf8_lossy(&std::fs::read(p).unwrap()).into_owned();
    let outcome = Outcome {
        status,
        stdout: read(&out_path),
        stderr: read(&err_path),
    };
    let _ = std::fs::remove_file(out_path);
    let _ = std::fs::remove_file(err_path);
    outcome
}

// ------------------------------------------------------------------ the parent's tests

#[test]
fn legal_work_on_many_threads_never_reports_in_abort_mode() {
    let out = run_child("legal-abort");
    assert!(out.status.success(), "{}", out.tail());
    assert_eq!(out.reports(), Vec::<String>::new(), "{}", out.tail());
    assert!(
        out.stdout.contains("legal work done, 0 violations"),
        "{}",
        out.tail()
    );
}

#[test]
fn legal_work_on_many_threads_never_reports_in_continue_mode() {
    let out = run_child("legal-continue");
    assert!(out.status.success(), "{}", out.tail());
    assert_eq!(out.reports(), Vec::<String>::new(), "{}", out.tail());
    assert!(
        out.stdout.contains("legal work done, 0 violations"),
        "{}",
        out.tail()
    );
}

#[test]
fn each_injected_violation_is_reported_once_in_continue_mode() {
    let out = run_child("inject-continue");
    assert!(out.status.success(), "{}", out.tail());
    let expected: Vec<String> = INJECTIONS
        .iter()
        .map(|i| i.kind.describe().to_owned())
        .collect();
    assert_eq!(out.reports(), expected, "{}", out.tail());
    assert!(
        out.stdout
            .contains(&format!("{} injected, each counted once", INJECTIONS.len())),
        "{}",
        out.tail()
    );
}

#[test]
fn each_injected_violation_stops_abort_mode_after_one_report() {
    for inj in INJECTIONS {
        let out = run_child(&format!("inject-abort-{}", inj.name));
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGSEGV),
            "{}: {}",
            inj.name,
            out.tail()
        );
        assert_eq!(
            out.reports(),
            vec![inj.kind.describe().to_owned()],
            "{}: {}",
            inj.name,
            out.tail()
        );
        assert!(!out.stdout.contains("survived"), "{}", out.tail());
    }
}

#[test]
fn a_sent_sigsegv_or_sigbus_kills_the_process() {
    for sig in ["SEGV", "BUS"] {
        for how in ["kill", "raise", "tgkill"] {
            let out = run_child(&format!("sent-{sig}-{how}"));
            let signal = if sig == "SEGV" {
                libc::SIGSEGV
            } else {
                libc::SIGBUS
            };
            assert_eq!(
                out.status.signal(),
                Some(signal),
                "{sig} by {how}: {}",
                out.tail()
            );
            assert!(!out.stdout.contains("survived"), "{}", out.tail());
            assert_eq!(out.reports(), Vec::<String>::new(), "{}", out.tail());
        }
    }
}

#[test]
fn a_sent_sigsegv_goes_to_the_previous_handler() {
    let out = run_child("sent-previous");
    assert_eq!(out.status.code(), Some(42), "{}", out.tail());
    // raise(3) is tgkill: SI_TKILL
    assert!(
        out.stderr.contains(&format!(
            "previous handler: signal 11 code {}",
            libc::SI_TKILL
        )),
        "{}",
        out.tail()
    );
}

#[test]
fn an_ignored_sent_sigsegv_leaves_protect_mode_working() {
    let out = run_child("sent-ignored");
    assert!(out.status.success(), "{}", out.tail());
    assert!(
        out.stdout.contains("survived the ignored signal"),
        "{}",
        out.tail()
    );
    assert_eq!(
        out.reports(),
        vec![ProtectViolation::NoMapping.describe().to_owned()],
        "{}",
        out.tail()
    );
}

#[test]
fn a_foreign_fault_repaired_by_the_previous_handler_leaves_protect_mode_working() {
    let out = run_child("foreign-repaired");
    assert!(out.status.success(), "{}", out.tail());
    assert!(
        out.stdout.contains("repaired fault read 7"),
        "{}",
        out.tail()
    );
    assert_eq!(
        out.reports(),
        vec![ProtectViolation::NoMapping.describe().to_owned()],
        "{}",
        out.tail()
    );
}

#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "the handler's stack use is that of an optimised build (meson runs cargo test --release)"
)]
fn the_handler_reports_on_a_4_kib_alternate_stack() {
    for mode in ["continue", "abort"] {
        let out = run_child(&format!("small-altstack-{mode}"));
        if mode == "continue" {
            assert!(out.status.success(), "{}", out.tail());
            assert!(
                out.stdout.contains("alternate stack used:"),
                "{}",
                out.tail()
            );
            println!(
                "{}",
                out.stdout
                    .lines()
                    .filter(|l| l.contains("stack"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        } else {
            assert_eq!(out.status.signal(), Some(libc::SIGSEGV), "{}", out.tail());
        }
        assert_eq!(
            out.reports(),
            vec![ProtectViolation::NoMapping.describe().to_owned()],
            "{mode}: {}",
            out.tail()
        );
        // the whole report, backtrace included
        let trace = out.stderr.split("backtrace").nth(1).unwrap_or("");
        assert!(
            trace.lines().nth(1).is_some_and(|l| l.starts_with("    ")),
            "{mode}: {}",
            out.tail()
        );
    }
}

#[test]
fn reads_after_free_at_the_quarantine_edge_are_reported_never_a_crash() {
    let out = run_child("quarantine-edge");
    assert!(out.status.success(), "{}", out.tail());
    let reports = out.reports();
    assert!(!reports.is_empty(), "{}", out.tail());
    // Freed (in quarantine, or kept for reuse), or reused by a newer block not mapped then.
    let allowed = [
        ProtectViolation::AfterFree.describe(),
        ProtectViolation::NoMapping.describe(),
    ];
    assert!(
        reports.iter().all(|r| allowed.contains(&r.as_str())),
        "{}",
        out.tail()
    );
    // Each read reported at most once (one that a newer block's mapping allowed, not at all).
    let reads: usize = out
        .stdout
        .split(" reads after free")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count of reads\n{}", out.tail()));
    assert!(
        reports.len() <= reads,
        "{} reports of {reads} reads\n{}",
        reports.len(),
        out.tail()
    );
}

// ------------------------------------------------------------------ the child's side

#[test]
fn child_process() {
    let Ok(case) = std::env::var(CHILD) else {
        return;
    };
    // No core files from the cases that die.
    let no_core = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a plain system call with a valid argument.
    unsafe { libc::setrlimit(libc::RLIMIT_CORE, &no_core) };
    common::init();
    let parts: Vec<&str> = case.split('-').collect();
    match parts.as_slice() {
        ["legal", mode] => legal(mode_of(mode)),
        ["inject", "continue"] => inject_continue(),
        ["inject", "abort", name @ ..] => inject_abort(&name.join("-")),
        ["sent", "previous"] => sent_previous(),
        ["sent", "ignored"] => sent_ignored(),
        ["sent", sig, how] => sent(sig, how),
        ["foreign", "repaired"] => foreign_repaired(),
        ["small", "altstack", mode] => small_altstack(mode_of(mode)),
        ["quarantine", "edge"] => quarantine_edge(),
        ["attack", ..] => attacks::child(&case["attack-".len()..]),
        _ => panic!("unknown case {case}"),
    }
}

fn mode_of(name: &str) -> ProtectMode {
    match name {
        "abort" => ProtectMode::Abort,
        "continue" => ProtectMode::Continue,
        _ => panic!("unknown mode {name}"),
    }
}

fn total_violations() -> u64 {
    ProtectViolation::ALL
        .iter()
        .map(|&k| protect_violations(k))
        .sum()
}

fn alloc(size: usize, prefix: usize, align: usize) -> AlignedMemory {
    let p = gst::AllocationParams::new(gst::MemoryFlags::empty(), align, prefix, 0);
    aligned_allocator().alloc_aligned(size, Some(&p)).unwrap()
}

/// The region base and maxsize of `mem`.
fn region(mem: &AlignedMemory) -> (usize, usize) {
    (mem.payload_addr() - mem.offset(), mem.maxsize())
}

/// A small generator (the test needs no quality, only spread and repeatability per thread).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % n.max(1)
    }
}

/// The memories the legal workers share: a hot block that a third of the picks take (64 KiB:
/// long maps and copies, so that they overlap on two cores), and the others.
struct Pool {
    hot: AlignedMemory,
    others: Mutex<Vec<AlignedMemory>>,
}

impl Pool {
    fn new() -> Pool {
        Pool {
            hot: alloc(65536, 0, 0),
            others: Mutex::default(),
        }
    }

    fn len(&self) -> usize {
        self.others.lock().unwrap().len()
    }
}

const POOL_MAX: usize = 12;

fn pick(pool: &Pool, rng: &mut Rng) -> Option<AlignedMemory> {
    if rng.below(3) == 0 {
        return Some(pool.hot.clone());
    }
    let others = pool.others.lock().unwrap();
    if others.is_empty() {
        return None;
    }
    Some(others[rng.below(others.len())].clone())
}

fn publish(pool: &Pool, mem: AlignedMemory, rng: &mut Rng) {
    let dropped = {
        let mut others = pool.others.lock().unwrap();
        others.push(mem);
        (others.len() > POOL_MAX).then(|| others.swap_remove(rng.below(POOL_MAX)))
    };
    drop(dropped);
}

/// Maps `mem` with `flags` through the C API (a WRITE map of a memory other threads hold
/// references on is legal: GStreamer's map lock arbitrates), runs `f` on the bytes, unmaps.
/// `false` when GStreamer refuses the map (another thread holds an incompatible one).
fn with_map(
    mem: &AlignedMemory,
    flags: gst::ffi::GstMapFlags,
    f: impl FnOnce(*mut u8, usize),
) -> bool {
    let mut info = std::mem::MaybeUninit::<gst::ffi::GstMapInfo>::zeroed();
    let raw = mem.as_ptr() as *mut gst::ffi::GstMemory;
    // SAFETY: a live memory; `info` is ours; unmapped below with the same info.
    unsafe {
        if gst::ffi::gst_memory_map(raw, info.as_mut_ptr(), flags) == 0 {
            return false;
        }
        let info = info.assume_init_mut();
        f(info.data, info.size);
        gst::ffi::gst_memory_unmap(raw, info);
    }
    true
}

/// What the legal workers did (so that a run that maps nothing for writing cannot pass
/// unnoticed).
static WRITE_MAPS: AtomicUsize = AtomicUsize::new(0);
static COPIES: AtomicUsize = AtomicUsize::new(0);

/// One worker's legal operations on the shared pool until `stop` or `ops` are done.
fn legal_worker(pool: &Pool, seed: u64, ops: usize, stop: &AtomicBool) {
    let mut rng = Rng(seed);
    const MASKS: [usize; 5] = [0, 7, 63, 127, 4095];
    for _ in 0..ops {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        match rng.below(100) {
            // a new block, written and resized while it is ours alone, then shared
            0..=11 => {
                let size = 1 + rng.below(20_000);
                let mut mem = alloc(size, rng.below(64), MASKS[rng.below(MASKS.len())]);
                let m = mem.get_mut().unwrap();
                if rng.below(2) == 0 {
                    let maxsize = m.maxsize();
                    let offset = rng.below(64.min(maxsize));
                    let new_size = rng.below(maxsize - offset + 1);
                    m.try_resize(offset as isize - m.offset() as isize, new_size)
                        .unwrap();
                }
                {
                    let mut map = m.map_writable().unwrap();
                    for (i, b) in map.as_mut_slice().iter_mut().enumerate() {
                        *b = i as u8;
                    }
                }
                publish(pool, mem, &mut rng);
            }
            // READ maps: every byte read, twice
            12..=36 => {
                if let Some(mem) = pick(pool, &mut rng) {
                    with_map(&mem, gst::ffi::GST_MAP_READ, |data, size| {
                        let mut sum = 0u32;
                        for _ in 0..2 {
                            for i in 0..size {
                                // SAFETY: inside the mapping, which allows reads.
                                sum = sum.wrapping_add(u32::from(unsafe {
                                    ptr::read_volatile(data.add(i))
                                }));
                            }
                        }
                        std::hint::black_box(sum);
                    });
                }
            }
            // WRITE maps of a memory others hold too: every byte written
            37..=56 => {
                if let Some(mem) = pick(pool, &mut rng) {
                    let seed = rng.below(256) as u8;
                    let mapped = with_map(&mem, gst::ffi::GST_MAP_WRITE, |data, size| {
                        for pass in 0..2u8 {
                            for i in 0..size {
                                let v = seed.wrapping_add(pass).wrapping_add(i as u8);
                                // SAFETY: inside the mapping, which allows writes.
                                unsafe { ptr::write_volatile(data.add(i), v) };
                            }
                        }
                    });
                    if mapped {
                        WRITE_MAPS.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            // copies, of blocks and shares, while others map them
            57..=71 => {
                if let Some(mem) = pick(pool, &mut rng) {
                    let size = mem.size();
                    let start = rng.below(size + 1);
                    let end = start + rng.below(size - start + 1);
                    let copy = mem.copy_range(start..end).unwrap();
                    assert_eq!(copy.size(), end - start);
                    COPIES.fetch_add(1, Ordering::Relaxed);
                    if rng.below(3) == 0 {
                        publish(pool, copy, &mut rng);
                    }
                }
            }
            // shares of roots (refused while the root is mapped for writing), read, copied,
            // and now and then kept (two shares of a root make it unwritable). Not of shares:
            // a share's share locks the root, which another thread may have mapped for
            // writing meanwhile (core's own `_sysmem_share` does the same, and the lock it
            // cannot take is then released once too often at the free: a CRITICAL).
            72..=85 => {
                if let Some(mem) = pick(pool, &mut rng).filter(|m| m.parent().is_none()) {
                    let size = mem.size();
                    let start = rng.below(size + 1);
                    let end = start + rng.below(size - start + 1);
                    if let Ok(share) = mem.share(start..end) {
                        with_map(&share, gst::ffi::GST_MAP_READ, |data, size| {
                            if size > 0 {
                                // SAFETY: inside the mapping, which allows reads.
                                std::hint::black_box(unsafe { ptr::read_volatile(data) });
                            }
                        });
                        let copy = share.copy_range(..).unwrap();
                        assert_eq!(copy.size(), end - start);
                        COPIES.fetch_add(1, Ordering::Relaxed);
                        if rng.below(8) == 0 {
                            publish(pool, share, &mut rng);
                        }
                    }
                }
            }
            // frees (of the pool's reference; others may still hold one)
            _ => {
                let dropped = {
                    let mut others = pool.others.lock().unwrap();
                    let n = others.len();
                    (n > 0).then(|| others.swap_remove(rng.below(n)))
                };
                drop(dropped);
            }
        }
    }
}

const WORKERS: usize = 4;

fn legal(mode: ProtectMode) {
    set_protect_mode(mode);
    let pool = Pool::new();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        for t in 0..WORKERS {
            let (pool, stop) = (&pool, &stop);
            s.spawn(move || legal_worker(pool, 0x5eed + t as u64 * 7919, 6_000, stop));
        }
    });
    drop(pool);
    let (writes, copies) = (
        WRITE_MAPS.load(Ordering::Relaxed),
        COPIES.load(Ordering::Relaxed),
    );
    println!("{writes} WRITE maps and {copies} copies of shared memories");
    assert!(writes > 1000 && copies > 1000, "the work mapped and copied");
    println!("legal work done, {} violations", total_violations());
}

/// An illegal access, and the kind it must be reported as.
struct Injection {
    name: &'static str,
    kind: ProtectViolation,
    run: fn(),
}

fn read(addr: usize) -> u8 {
    // SAFETY: deliberately illegal: protect mode stops it at the instruction (continue mode
    // then lets it complete on pages of our own block).
    unsafe { ptr::read_volatile(addr as *const u8) }
}

fn write(addr: usize, v: u8) {
    // SAFETY: as `read`.
    unsafe { ptr::write_volatile(addr as *mut u8, v) }
}

const INJECTIONS: &[Injection] = &[
    Injection {
        name: "write-through-read",
        kind: ProtectViolation::WriteThroughRead,
        run: || {
            let mem = alloc(1000, 0, 0);
            let map = mem.map_readable().unwrap();
            write(map.as_slice().as_ptr() as usize + 10, 1);
        },
    },
    Injection {
        name: "read-after-unmap",
        kind: ProtectViolation::NoMapping,
        run: || {
            let mem = alloc(3000, 0, 0);
            let addr = mem.map_readable().unwrap().as_slice().as_ptr() as usize;
            std::hint::black_box(read(addr + 100));
        },
    },
    Injection {
        name: "write-after-unmap",
        kind: ProtectViolation::NoMapping,
        run: || {
            let mut mem = alloc(3000, 0, 0);
            let addr = mem
                .get_mut()
                .unwrap()
                .map_writable()
                .unwrap()
                .as_slice()
                .as_ptr() as usize;
            write(addr + 5, 2);
        },
    },
    Injection {
        name: "read-after-free",
        kind: ProtectViolation::AfterFree,
        run: || {
            let mem = alloc(2000, 0, 0);
            let addr = mem.map_readable().unwrap().as_slice().as_ptr() as usize;
            drop(mem);
            std::hint::black_box(read(addr));
        },
    },
    Injection {
        // the byte after a freed block whose region fills its pages: the guard page
        name: "after-free-guard-page",
        kind: ProtectViolation::AfterFree,
        run: || {
            let mem = alloc(4096, 0, 0);
            let (base, maxsize) = region(&mem);
            assert_eq!((base + maxsize) % 4096, 0);
            drop(mem);
            std::hint::black_box(read(base + maxsize));
        },
    },
    Injection {
        name: "read-past-maxsize",
        kind: ProtectViolation::PastMaxsize,
        run: || {
            let mem = alloc(4096, 0, 0);
            let (base, maxsize) = region(&mem);
            let _map = mem.map_readable().unwrap();
            std::hint::black_box(read(base + maxsize));
        },
    },
    Injection {
        name: "write-before-block",
        kind: ProtectViolation::BeforeBlock,
        run: || {
            let mut mem = alloc(8192, 0, 0);
            let (base, _) = region(&mem);
            assert_eq!(base % 4096, 0);
            let _map = mem.get_mut().unwrap().map_writable().unwrap();
            write(base - 1, 3);
        },
    },
    Injection {
        // prefix 10, alignment 64, 100 bytes: 10 bytes of slack after maxsize, on the
        // region's last page; written under a READ mapping
        name: "write-slack-under-read",
        kind: ProtectViolation::PastMaxsize,
        run: || {
            let mem = alloc(100, 10, 63);
            let (base, maxsize) = region(&mem);
            assert_ne!((base + maxsize) % 4096, 0, "slack after the region");
            {
                let _map = mem.map_readable().unwrap();
                write(base + maxsize, 4);
            }
            drop(mem);
        },
    },
];

/// Legal workers in the background of `f`.
fn with_background_work(f: impl FnOnce()) {
    let pool = Pool::new();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        for t in 0..WORKERS - 1 {
            let (pool, stop) = (&pool, &stop);
            s.spawn(move || legal_worker(pool, 0xabc + t as u64 * 104_729, usize::MAX, stop));
        }
        // Some work under way first.
        let started = Instant::now();
        while pool.len() < POOL_MAX / 2 && started.elapsed() < DEADLINE / 4 {
            std::thread::sleep(Duration::from_millis(5));
        }
        f();
        stop.store(true, Ordering::Relaxed);
    });
}

fn inject_continue() {
    set_protect_mode(ProtectMode::Continue);
    with_background_work(|| {
        for inj in INJECTIONS {
            let before: Vec<u64> = ProtectViolation::ALL
                .iter()
                .map(|&k| protect_violations(k))
                .collect();
            (inj.run)();
            for (i, &k) in ProtectViolation::ALL.iter().enumerate() {
                let want = before[i] + u64::from(k == inj.kind);
                assert_eq!(
                    protect_violations(k),
                    want,
                    "{}: {:?} counted {} times",
                    inj.name,
                    k,
                    protect_violations(k) - before[i]
                );
            }
        }
    });
    assert_eq!(total_violations(), INJECTIONS.len() as u64);
    println!("{} injected, each counted once", INJECTIONS.len());
}

fn inject_abort(name: &str) {
    set_protect_mode(ProtectMode::Abort);
    let inj = INJECTIONS
        .iter()
        .find(|i| i.name == name)
        .expect("injection");
    with_background_work(|| (inj.run)());
    println!("survived {name}");
}

/// Gives SIGSEGV and SIGBUS back their default action (the Rust runtime installs a handler of
/// its own for stack overflows, which swallows a sent signal once by itself).
fn default_fault_actions() {
    for sig in [libc::SIGSEGV, libc::SIGBUS] {
        // SAFETY: plain libc calls with valid arguments.
        unsafe {
            let mut dfl: libc::sigaction = std::mem::zeroed();
            dfl.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(sig, &dfl, ptr::null_mut());
        }
    }
}

/// Waits a generous while for a signal already sent to kill the process, then says it did
/// not.
fn survive() {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    println!("survived");
}

fn sent(sig: &str, how: &str) {
    let sig = if sig == "SEGV" {
        libc::SIGSEGV
    } else {
        libc::SIGBUS
    };
    default_fault_actions();
    set_protect_mode(ProtectMode::Abort);
    // The first protected block installs the handler.
    let _mem = alloc(100, 0, 0);
    // SAFETY: plain system calls.
    unsafe {
        match how {
            "kill" => libc::kill(libc::getpid(), sig),
            "raise" => libc::raise(sig),
            _ => libc::syscall(libc::SYS_tgkill, libc::getpid(), libc::gettid(), sig) as i32,
        };
    }
    survive();
}

extern "C" fn previous_handler(sig: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let mut buf = [0u8; 80];
    let mut line = std::io::Cursor::new(&mut buf[..]);
    // SAFETY: the kernel's siginfo.
    let code = unsafe { (*info).si_code };
    let _ = std::io::Write::write_fmt(
        &mut line,
        format_args!("previous handler: signal {sig} code {code}\n"),
    );
    let n = line.position() as usize;
    // SAFETY: write(2) and _exit(2) are async-signal-safe.
    unsafe {
        libc::write(2, buf.as_ptr().cast(), n);
        libc::_exit(42);
    }
}

fn sent_previous() {
    // SAFETY: installs a handler of ours before protect mode's.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = previous_handler as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO;
        libc::sigaction(libc::SIGSEGV, &action, ptr::null_mut());
    }
    set_protect_mode(ProtectMode::Abort);
    let _mem = alloc(100, 0, 0);
    // SAFETY: a plain libc call.
    unsafe { libc::raise(libc::SIGSEGV) };
    survive();
}

/// A violation in continue mode after `f`: protect mode must still report it.
fn then_a_violation() {
    let mem = alloc(3000, 0, 0);
    let addr = mem.map_readable().unwrap().as_slice().as_ptr() as usize;
    std::hint::black_box(read(addr));
    assert_eq!(protect_violations(ProtectViolation::NoMapping), 1);
}

fn sent_ignored() {
    // SAFETY: plain libc calls with valid arguments.
    unsafe {
        let mut ign: libc::sigaction = std::mem::zeroed();
        ign.sa_sigaction = libc::SIG_IGN;
        libc::sigaction(libc::SIGSEGV, &ign, ptr::null_mut());
    }
    set_protect_mode(ProtectMode::Continue);
    let _mem = alloc(100, 0, 0);
    // SAFETY: a plain libc call.
    unsafe { libc::raise(libc::SIGSEGV) };
    println!("survived the ignored signal");
    then_a_violation();
}

/// A page of someone else's (not protect mode's), inaccessible until its owner's handler
/// opens it.
static FOREIGN: AtomicUsize = AtomicUsize::new(0);

extern "C" fn repairing_handler(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let page = FOREIGN.load(Ordering::Relaxed);
    // SAFETY: the kernel's siginfo; mprotect(2) is async-signal-safe, on our own page.
    unsafe {
        if (*info).si_addr() as usize & !4095 == page {
            libc::mprotect(page as *mut _, 4096, libc::PROT_READ | libc::PROT_WRITE);
        } else {
            libc::_exit(43);
        }
    }
}

fn foreign_repaired() {
    // SAFETY: a new anonymous page of this test's, and a handler for it.
    unsafe {
        let page = libc::mmap(
            ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(page, libc::MAP_FAILED);
        *(page as *mut u8) = 7;
        libc::mprotect(page, 4096, libc::PROT_NONE);
        FOREIGN.store(page as usize, Ordering::Relaxed);
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = repairing_handler as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO;
        libc::sigaction(libc::SIGSEGV, &action, ptr::null_mut());
    }
    set_protect_mode(ProtectMode::Continue);
    let _mem = alloc(100, 0, 0);
    let v = read(FOREIGN.load(Ordering::Relaxed));
    println!("repaired fault read {v}");
    then_a_violation();
}

const SMALL_STACK: usize = 4096;
const FILL: u8 = 0xA5;
static FRAME_AT: AtomicUsize = AtomicUsize::new(0);

extern "C" fn frame_probe(_: libc::c_int) {
    let local = 0u8;
    FRAME_AT.store(&raw const local as usize, Ordering::Relaxed);
}

fn small_altstack(mode: ProtectMode) {
    set_protect_mode(mode);
    let mem = Arc::new(alloc(3000, 0, 0));
    let addr = mem.map_readable().unwrap().as_slice().as_ptr() as usize;
    let worker = std::thread::spawn(move || {
        // SAFETY: an anonymous mapping for the stack, with an inaccessible page below it (an
        // overflow faults instead of writing over other memory); the old alternate stack is
        // put back before the mapping goes.
        unsafe {
            let len = SMALL_STACK + 4096;
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
            ptr::write_bytes(stack, FILL, SMALL_STACK);
            let ss = libc::stack_t {
                ss_sp: stack.cast(),
                ss_flags: 0,
                ss_size: SMALL_STACK,
            };
            let mut old: libc::stack_t = std::mem::zeroed();
            assert_eq!(libc::sigaltstack(&ss, &mut old), 0);
            // The kernel's own signal frame on this stack, measured with a handler that
            // does nothing.
            let mut probe: libc::sigaction = std::mem::zeroed();
            probe.sa_sigaction = frame_probe as *const () as usize;
            probe.sa_flags = libc::SA_ONSTACK;
            libc::sigaction(libc::SIGUSR1, &probe, ptr::null_mut());
            libc::raise(libc::SIGUSR1);
            let frame = stack as usize + SMALL_STACK - FRAME_AT.load(Ordering::Relaxed);
            ptr::write_bytes(stack, FILL, SMALL_STACK);
            // The violation: a read with no mapping alive.
            std::hint::black_box(read(addr));
            let untouched = (0..SMALL_STACK)
                .position(|i| *stack.add(i) != FILL)
                .unwrap_or(SMALL_STACK);
            libc::sigaltstack(&old, ptr::null_mut());
            libc::munmap(map, len);
            println!(
                "alternate stack used: {} of {SMALL_STACK} bytes (the kernel's signal frame: \
                 {frame}; the handler: {})",
                SMALL_STACK - untouched,
                (SMALL_STACK - untouched).saturating_sub(frame)
            );
        }
        drop(mem);
    });
    worker.join().unwrap();
    assert_eq!(protect_violations(ProtectViolation::NoMapping), 1);
}

/// Continue mode: one thread allocates, writes and frees blocks until their regions go round
/// the quarantine and are reused; another reads blocks freed about a quarantine ago, whose
/// regions are leaving it, being reclaimed or reused meanwhile.
fn quarantine_edge() {
    set_protect_mode(ProtectMode::Continue);
    const CHURN: usize = 12_000;
    // Freed blocks' payload addresses, oldest first.
    let freed = Mutex::new(std::collections::VecDeque::new());
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0..CHURN {
                let mut mem = alloc(3000, 0, 0);
                let addr = {
                    let mut map = mem.get_mut().unwrap().map_writable().unwrap();
                    map.as_mut_slice()[0] = i as u8;
                    map.as_slice().as_ptr() as usize
                };
                drop(mem);
                freed.lock().unwrap().push_back(addr);
            }
            done.store(true, Ordering::Relaxed);
        });
        let mut reads = 0usize;
        while !done.load(Ordering::Relaxed) {
            let addr = {
                let mut freed = freed.lock().unwrap();
                // About a quarantine ago (a quarter of the mappings budget, ~4,000 blocks).
                if freed.len() > 3_900 {
                    freed.pop_front()
                } else {
                    None
                }
            };
            match addr {
                Some(addr) => {
                    std::hint::black_box(read(addr));
                    reads += 1;
                }
                None => std::thread::yield_now(),
            }
        }
        println!("churned {CHURN} blocks, {reads} reads after free");
    });
}
