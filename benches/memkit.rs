// SPDX-License-Identifier: MPL-2.0
//! AlignedMemory next to GStreamer's SystemMemory, interleaved in one process.
//!
//! `cargo bench --bench memkit` prints `name  memkit  system  ratio` rows; each figure is
//! measured `REPEATS` times, alternating which allocator goes first, and the row shows the
//! medians of both and the median of the per-repeat ratios (memkit / system: below 1 is
//! faster). `-- --quick` runs every figure once with few iterations: a smoke test for CI, not
//! a measurement. The rows the floor allocator can serve (`floor.rs`: what core requires and
//! nothing else, up to 4 KiB) also print its median and the median of memkit/floor ratios.
//! Other words select sections: `-- allocs map_share copies buffer_map threads
//! frames observability pipelines rss protect`.

#![deny(unsafe_code)]

// The benchmark's floor allocator is FFI by nature; its unsafe code stays in that one module.
#[allow(unsafe_code)]
mod floor;

use std::hint::black_box;
use std::time::{Duration, Instant};

use gst::prelude::*;
use gstmemkit::allocator::aligned_allocator;

struct Config {
    repeats: usize,
    scale: f64,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Nanoseconds per operation of `f` run `iters` times (after a short warm-up).
fn ns_per_op(iters: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..iters.div_ceil(10).min(1000) {
        f();
    }
    let start = Instant::now();
    for _ in 0..iters {
        f();
    }
    start.elapsed().as_nanos() as f64 / iters as f64
}

/// Runs `ours` and `theirs` interleaved `repeats` times; prints and returns the medians.
fn compare(
    cfg: &Config,
    name: &str,
    unit: &str,
    mut ours: impl FnMut() -> f64,
    mut theirs: impl FnMut() -> f64,
) -> (f64, f64, f64) {
    let (mut a, mut b, mut r) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..cfg.repeats {
        let (x, y) = if i % 2 == 0 {
            let x = ours();
            (x, theirs())
        } else {
            let y = theirs();
            (ours(), y)
        };
        a.push(x);
        b.push(y);
        r.push(x / y);
    }
    let (ma, mb, mr) = (median(&mut a), median(&mut b), median(&mut r));
    println!("{name:<44} {ma:>12.1} {mb:>12.1} {mr:>8.2}   {unit}");
    (ma, mb, mr)
}

/// Like [`compare`], with the floor allocator (`floor.rs`) as a third contender, the three
/// rotated in each repeat: the row also shows the floor's median and the median of the
/// per-repeat memkit/floor ratios.
fn compare_floor(
    cfg: &Config,
    name: &str,
    mut ours: impl FnMut() -> f64,
    mut theirs: impl FnMut() -> f64,
    mut floor: impl FnMut() -> f64,
) {
    let (mut a, mut b, mut c, mut r, mut rf) = (vec![], vec![], vec![], vec![], vec![]);
    for i in 0..cfg.repeats {
        let mut t = [0.0; 3];
        for k in 0..3 {
            let j = (i + k) % 3;
            t[j] = match j {
                0 => ours(),
                1 => theirs(),
                _ => floor(),
            };
        }
        a.push(t[0]);
        b.push(t[1]);
        c.push(t[2]);
        r.push(t[0] / t[1]);
        rf.push(t[0] / t[2]);
    }
    let (ma, mb, mc) = (median(&mut a), median(&mut b), median(&mut c));
    let (mr, mrf) = (median(&mut r), median(&mut rf));
    println!(
        "{name:<44} {ma:>12.1} {mb:>12.1} {mr:>8.2}   ns/op; floor {mc:.1} ns/op, memkit/floor {mrf:.2}"
    );
}

fn iters(cfg: &Config, n: usize) -> usize {
    ((n as f64 * cfg.scale) as usize).max(1)
}

fn sys() -> gst::Allocator {
    gst::Allocator::find(Some("SystemMemory")).unwrap()
}

fn ours() -> gst::Allocator {
    aligned_allocator().upcast()
}

fn alloc_unref(cfg: &Config, label: &str, size: usize, params: &gst::AllocationParams) {
    let n = iters(cfg, if size >= 1 << 20 { 20_000 } else { 200_000 });
    let (a, s) = (ours(), sys());
    let name = format!("alloc+unref {label}");
    let ours = || ns_per_op(n, || drop(black_box(a.alloc(size, Some(params)).unwrap())));
    let theirs = || ns_per_op(n, || drop(black_box(s.alloc(size, Some(params)).unwrap())));
    if floor::serves(size, params) {
        let f = floor::floor();
        let floor = || ns_per_op(n, || drop(black_box(f.alloc(size, Some(params)).unwrap())));
        compare_floor(cfg, &name, ours, theirs, floor);
    } else {
        compare(cfg, &name, "ns/op", ours, theirs);
    }
}

/// Protect mode against itself off: 10,000 cycles of alloc, map WRITE, fill every byte,
/// unmap, free, at random sizes (1 byte to 16 KiB, the same sequence in every run). The first
/// protected run starts with no region to reuse (every block a fresh mapping until the
/// quarantine fills); the rows after it are the steady state. Rows read "on  off  on/off";
/// the floor is what the two protection changes of a cycle cost alone.
fn protect(cfg: &Config) {
    use gstmemkit::allocator::{ProtectMode, set_protect_mode};
    let a = ours();
    let cycles = iters(cfg, 10_000);
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let sizes: Vec<usize> = (0..cycles)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            1 + (seed % 16_384) as usize
        })
        .collect();
    let run = |mode: ProtectMode| {
        set_protect_mode(mode);
        let start = Instant::now();
        for &size in &sizes {
            let mut mem = a.alloc(size, None).unwrap();
            {
                let mut map = mem.get_mut().unwrap().map_writable().unwrap();
                map.as_mut_slice().fill(0x5a);
            }
            drop(black_box(mem));
        }
        let ns = start.elapsed().as_nanos() as f64 / cycles as f64;
        set_protect_mode(ProtectMode::Off);
        ns
    };
    let off = run(ProtectMode::Off);
    let cold = run(ProtectMode::Abort);
    println!(
        "{:<44} {cold:>12.1} {off:>12.1} {:>8.2}   ns/cycle, first protected run",
        format!("protect: {cycles} alloc+map+fill+unmap+free"),
        cold / off
    );
    let (_, off, _) = compare(
        cfg,
        &format!("protect: {cycles} alloc+map+fill+unmap+free"),
        "ns/cycle, steady",
        || run(ProtectMode::Abort),
        || run(ProtectMode::Off),
    );
    let floor = floor::mprotect_pair_ns(iters(cfg, 100_000));
    println!(
        "{:<44} {floor:>12.1} {off:>12.1} {:>8.2}   ns: two mprotect of one page (floor/off)",
        "protect: floor",
        floor / off
    );
    // The same pair and an 8 KiB fill (the cycles' mean) on regions of two pages in turn:
    // 16 of them (all warm), and 4,096 (the quarantine's depth: each region's pages last
    // touched 4,096 cycles before). What a cycle costs at least.
    for regions in [16, 4096] {
        let cold = floor::mprotect_cycle_ns(iters(cfg, 40_000), regions, 2);
        println!(
            "{:<44} {cold:>12.1} {off:>12.1} {:>8.2}   ns: the same on {regions} regions in turn, 8 KiB filled",
            format!("protect: floor, {regions} regions"),
            cold / off
        );
    }
}

/// memkit against itself: statistics on vs off, and guard mode vs off (1 KiB alloc+unref and
/// share+unref). Rows read "on  off  on/off".
fn observability(cfg: &Config) {
    use gstmemkit::allocator::{set_guard_enabled, stats};
    let n = iters(cfg, 200_000);
    let a = ours();
    let run = |stats_on: bool, guard: bool| {
        stats::set_enabled(stats_on);
        set_guard_enabled(guard);
        let t = ns_per_op(n, || {
            let m = a.alloc(1024, None).unwrap();
            drop(black_box(m.share(0..512)));
        });
        stats::set_enabled(true);
        set_guard_enabled(false);
        t
    };
    let plain = |stats_on: bool| {
        stats::set_enabled(stats_on);
        let t = ns_per_op(n, || drop(black_box(a.alloc(1024, None).unwrap())));
        stats::set_enabled(true);
        t
    };
    compare(
        cfg,
        "stats on vs off: alloc+unref 1 KiB",
        "ns/op (memkit with / without)",
        || plain(true),
        || plain(false),
    );
    compare(
        cfg,
        "stats on vs off: alloc+share+unref 1 KiB",
        "ns/op (memkit with / without)",
        || run(true, false),
        || run(false, false),
    );
    compare(
        cfg,
        "guard on vs off: alloc+share+unref 1 KiB",
        "ns/op (memkit with / without)",
        || run(true, true),
        || run(true, false),
    );
}

fn human(size: usize) -> String {
    match size {
        s if s >= 1 << 20 => format!("{} MiB", s >> 20),
        s if s >= 1 << 10 => format!("{} KiB", s >> 10),
        s => format!("{s} B"),
    }
}

fn allocs(cfg: &Config) {
    let default = gst::AllocationParams::default();
    let zero = gst::AllocationParams::new(
        gst::MemoryFlags::ZERO_PREFIXED | gst::MemoryFlags::ZERO_PADDED,
        63,
        64,
        64,
    );
    let page = gst::AllocationParams::new(gst::MemoryFlags::empty(), 4095, 0, 0);
    for size in [64, 1 << 10, 64 << 10, 1 << 20, 4 << 20] {
        alloc_unref(cfg, &human(size), size, &default);
    }
    for size in [64, 1 << 10, 64 << 10, 1 << 20, 4 << 20] {
        alloc_unref(
            cfg,
            &format!("{} align63+pfx64+pad64+ZERO", human(size)),
            size,
            &zero,
        );
    }
    for size in [1 << 10, 1 << 20] {
        alloc_unref(cfg, &format!("{} align4095", human(size)), size, &page);
    }
}

/// One map+unmap, out of line: both allocators run the very same machine code, so that code
/// placement does not tilt the comparison.
#[inline(never)]
fn map_unmap(mem: &mut gst::Memory) {
    drop(black_box(mem.get_mut().unwrap().map_writable().unwrap()));
}

fn map_share(cfg: &Config) {
    let n = iters(cfg, 1_000_000);
    let mut a = ours().alloc(4096, None).unwrap();
    let mut s = sys().alloc(4096, None).unwrap();
    compare(
        cfg,
        "map(READ|WRITE)+unmap 4 KiB",
        "ns/op",
        || ns_per_op(n, || map_unmap(&mut a)),
        || ns_per_op(n, || map_unmap(&mut s)),
    );
    let f = floor::floor().alloc(4096, None).unwrap();
    compare_floor(
        cfg,
        "share+unref 4 KiB",
        || ns_per_op(n, || drop(black_box(a.share(16..1024)))),
        || ns_per_op(n, || drop(black_box(s.share(16..1024)))),
        || ns_per_op(n, || drop(black_box(f.share(16..1024)))),
    );
}

fn copies(cfg: &Config) {
    let size = 1 << 20;
    let n = iters(cfg, 2_000);
    // Sources written first: untouched anonymous pages all map the kernel's one zero page,
    // which would make the copies read from cache.
    let filled = |alloc: gst::Allocator| {
        let mut m = alloc.alloc(size, None).unwrap();
        m.get_mut()
            .unwrap()
            .map_writable()
            .unwrap()
            .as_mut_slice()
            .iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = i as u8);
        m
    };
    let (a, s) = (filled(ours()), filled(sys()));
    let gbps = |ns: f64| size as f64 / ns;
    let (ma, _, _) = compare(
        cfg,
        "copy 1 MiB",
        "ns/op",
        || ns_per_op(n, || drop(black_box(a.copy_range(..)))),
        || ns_per_op(n, || drop(black_box(s.copy_range(..)))),
    );
    let src: Vec<u8> = (0..size).map(|i| i as u8).collect();
    let mut dst = vec![0u8; size];
    let mut memcpy = Vec::new();
    for _ in 0..cfg.repeats {
        memcpy.push(ns_per_op(n, || {
            dst.copy_from_slice(black_box(&src));
            black_box(&mut dst);
        }));
    }
    let memcpy = median(&mut memcpy);
    println!(
        "{:<44} {:>12.1} {:>12.1} {:>8.2}   GB/s (memkit copy / memcpy, same run)",
        "copy 1 MiB bandwidth vs memcpy",
        gbps(ma),
        gbps(memcpy),
        gbps(ma) / gbps(memcpy)
    );
}

fn buffer_map(cfg: &Config) {
    let n = iters(cfg, 200_000);
    let build = |alloc: &gst::Allocator| {
        let p = gst::AllocationParams::new(gst::MemoryFlags::empty(), 0, 64, 0);
        let parent = alloc.alloc(16 * 4096, Some(&p)).unwrap();
        let base = parent.map_readable().unwrap().as_slice().as_ptr() as usize;
        let mut buf = gst::Buffer::new();
        for i in 0..16 {
            buf.get_mut()
                .unwrap()
                .append_memory(parent.share(i * 4096..(i + 1) * 4096));
        }
        (buf, base)
    };
    let (ba, base_a) = build(&ours());
    let (bs, base_s) = build(&sys());
    let zero_copy = |buf: &gst::Buffer, base: usize| {
        buf.map_readable().unwrap().as_slice().as_ptr() as usize == base
    };
    assert!(
        zero_copy(&ba, base_a),
        "memkit: buffer map of contiguous shares copied"
    );
    let sys_zero_copy = zero_copy(&bs, base_s);
    compare(
        cfg,
        "gst_buffer_map of 16 contiguous shares",
        if sys_zero_copy {
            "ns/op (both zero-copy)"
        } else {
            "ns/op (memkit zero-copy, system copies)"
        },
        || ns_per_op(n, || drop(black_box(ba.map_readable().unwrap()))),
        || ns_per_op(n, || drop(black_box(bs.map_readable().unwrap()))),
    );
}

/// Total alloc+unref operations per second (in millions) of `threads` threads on 1 KiB blocks.
fn mops(alloc: &gst::Allocator, threads: usize, per_thread: usize) -> f64 {
    let barrier = std::sync::Barrier::new(threads);
    let start = std::sync::Mutex::new(None::<Instant>);
    let elapsed: Vec<Duration> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let alloc = alloc.clone();
                let (barrier, start) = (&barrier, &start);
                s.spawn(move || {
                    barrier.wait();
                    let t0 = *start.lock().unwrap().get_or_insert_with(Instant::now);
                    for _ in 0..per_thread {
                        drop(black_box(alloc.alloc(1024, None).unwrap()));
                    }
                    t0.elapsed()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let wall = elapsed.into_iter().max().unwrap().as_secs_f64();
    (threads * per_thread) as f64 / wall / 1e6
}

fn threads(cfg: &Config) {
    let n = iters(cfg, 1_000_000);
    let (a, s) = (ours(), sys());
    let (two_a, two_s, _) = compare(
        cfg,
        "2-thread alloc+unref 1 KiB (total)",
        "Mops/s (higher is better)",
        || mops(&a, 2, n),
        || mops(&s, 2, n),
    );
    let (one_a, one_s, _) = compare(
        cfg,
        "1-thread alloc+unref 1 KiB",
        "Mops/s (higher is better)",
        || mops(&a, 1, n),
        || mops(&s, 1, n),
    );
    println!(
        "{:<44} {:>12.2} {:>12.2} {:>8}   2-thread / 1-thread rate of each allocator",
        "2-thread scaling",
        two_a / one_a,
        two_s / one_s,
        ""
    );
}

/// Seconds to run `desc` to EOS, and the pipeline (for its elements' stats).
fn run_pipeline(desc: &str) -> (f64, gst::Element) {
    let p = gst::parse::launch(desc).unwrap();
    let bus = p.bus().unwrap();
    let t0 = Instant::now();
    p.set_state(gst::State::Playing).unwrap();
    for msg in bus.iter_timed(gst::ClockTime::NONE) {
        match msg.view() {
            gst::MessageView::Eos(_) => break,
            gst::MessageView::Error(e) => panic!("{desc}: {}", e.error()),
            _ => {}
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    p.set_state(gst::State::Null).unwrap();
    (secs, p)
}

fn stat(p: &gst::Element, element: &str, field: &str) -> u64 {
    let bin = p.downcast_ref::<gst::Bin>().unwrap();
    let e = bin.by_name(element).unwrap();
    e.property::<gst::Structure>("stats").get(field).unwrap()
}

fn pipelines(cfg: &Config) {
    let frames = iters(cfg, 300);
    let caps = "video/x-raw,format=I420,width=1920,height=1080";
    let mut copied = 0;
    compare(
        cfg,
        &format!("videotestsrc ! memalign ! fakesink ({frames} 1080p)"),
        "ms (vs without memalign)",
        || {
            let (t, p) = run_pipeline(&format!(
                "videotestsrc num-buffers={frames} pattern=black ! {caps} ! memalign name=a ! fakesink"
            ));
            copied += stat(&p, "a", "buffers-copied");
            t * 1e3
        },
        || {
            run_pipeline(&format!(
                "videotestsrc num-buffers={frames} pattern=black ! {caps} ! fakesink"
            ))
            .0 * 1e3
        },
    );
    println!(
        "{:<44} {copied:>12}   buffers copied by memalign, all repeats",
        "  memalign"
    );
    let blocks = iters(cfg, 2000);
    let (t, p) = run_pipeline(&format!(
        "memsrc num-buffers={blocks} blocksize=65536 ! memslice chunk-size=4096 ! memmerge name=m target-size=65536 ! fakesink"
    ));
    println!(
        "{:<44} {:>12.1} {:>12} {:>8}   MB/s; zero-copy merges {}, bytes copied {}",
        "memsrc ! memslice ! memmerge ! fakesink",
        (blocks * 65536) as f64 / t / 1e6,
        "",
        "",
        stat(&p, "m", "zero-copy-merges"),
        stat(&p, "m", "bytes-copied")
    );
}

/// Minor page faults of this process so far (field 10 of /proc/self/stat).
fn minor_faults() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // The command name (field 2) may hold spaces; count fields after its closing parenthesis.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    rest.split(' ').nth(7).unwrap().parse().unwrap()
}

/// A 4K I420 frame (3840x2160, 12 MiB) allocated, written whole and freed, again and again:
/// page faults per frame and time per frame.
fn frames(cfg: &Config) {
    let size = 3840 * 2160 * 3 / 2;
    let n = iters(cfg, 50).max(2);
    let run = |alloc: &gst::Allocator| {
        let mut times = Vec::new();
        let faults0 = minor_faults();
        for _ in 0..n {
            let t0 = Instant::now();
            let mut m = alloc.alloc(size, None).unwrap();
            m.get_mut()
                .unwrap()
                .map_writable()
                .unwrap()
                .as_mut_slice()
                .fill(0x10);
            drop(black_box(m));
            times.push(t0.elapsed().as_nanos() as f64 / 1e3);
        }
        (
            median(&mut times),
            (minor_faults() - faults0) as f64 / n as f64,
        )
    };
    let mut faults = (0.0, 0.0);
    compare(
        cfg,
        "4K frame (12 MiB) alloc+fill+unref",
        "us/frame",
        || {
            let (t, f) = run(&ours());
            faults.0 = f;
            t
        },
        || {
            let (t, f) = run(&sys());
            faults.1 = f;
            t
        },
    );
    println!(
        "{:<44} {:>12.1} {:>12.1} {:>8}   minor page faults per frame (last repeat)",
        "  page faults", faults.0, faults.1, ""
    );
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

fn rss(cfg: &Config) {
    let a = ours();
    let count = iters(cfg, 256);
    // Start from an empty cache, so that "before" holds no blocks of the earlier sections.
    gstmemkit::allocator::trim_cache();
    let before = rss_kib();
    let burst: Vec<gst::Memory> = (0..count)
        .map(|_| {
            let mut m = a.alloc(1 << 20, None).unwrap();
            m.get_mut()
                .unwrap()
                .map_writable()
                .unwrap()
                .as_mut_slice()
                .fill(1);
            m
        })
        .collect();
    let peak = rss_kib();
    drop(burst);
    let cached = rss_kib();
    gstmemkit::allocator::trim_cache();
    let after = rss_kib();
    println!(
        "RSS (KiB): before {before}, peak of a {count} x 1 MiB burst {peak}, after free {cached}, \
         after trim {after} ({:+.1}% vs before)",
        (after as f64 - before as f64) / before as f64 * 100.0
    );
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let cfg = if quick {
        Config {
            repeats: 1,
            scale: 0.01,
        }
    } else {
        Config {
            repeats: 11,
            scale: 1.0,
        }
    };
    gst::init().unwrap();
    gstmemkit::plugin_register_static().unwrap();
    println!(
        "{:<44} {:>12} {:>12} {:>8}",
        "name", "memkit", "system", "ratio"
    );
    // Words other than options select sections by name (e.g. `threads rss`); none: all.
    let selected: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    type Section = (&'static str, fn(&Config));
    let sections: [Section; 10] = [
        ("allocs", allocs),
        ("map_share", map_share),
        ("copies", copies),
        ("buffer_map", buffer_map),
        ("threads", threads),
        ("frames", frames),
        ("observability", observability),
        ("pipelines", pipelines),
        ("rss", rss),
        ("protect", protect),
    ];
    for (name, run) in sections {
        if selected.is_empty() || selected.iter().any(|s| s == name) {
            run(&cfg);
        }
    }
    if quick {
        println!("(--quick: a smoke test; the figures above are not measurements)");
    }
}
