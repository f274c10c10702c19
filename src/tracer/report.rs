// SPDX-License-Identifier: MPL-2.0
//! The tracer's report: collected from the allocator statistics, the tracked live blocks and
//! the guard violations, printed as text and written as JSON.

use std::borrow::Cow;
use std::fmt::Write as _;

use crate::allocator::{self, aligned::stats::Counter};
use crate::attribution;

/// Everything a report says.
#[derive(Debug, Clone)]
pub struct Report {
    pub title: String,
    pub at_exit: bool,
    pub stats: allocator::stats::Stats,
    /// Blocks alive now (at exit: leaks), `(address, bytes)`, largest first.
    pub live_blocks: Vec<(usize, usize)>,
    pub guard: bool,
    pub violations: Vec<allocator::stats::Violation>,
    /// MemfdMemory's statistics (`memkit-memfd-stats`).
    pub memfd: gst::Structure,
    /// What each element was charged, the ones that copied first.
    pub elements: Vec<attribution::ElementCharges>,
    /// Blocks alive now, with the element that allocated each.
    pub blocks: Vec<attribution::Leak>,
    /// Whether memory of other allocators is seen (core's `memory-init`, GStreamer 1.26+).
    pub foreign_seen: bool,
    pub protect: allocator::ProtectMode,
    /// Protect mode's violations by kind (every one, recorded or not).
    pub protect_counts: Vec<(allocator::ProtectViolation, u64)>,
    /// Protect mode's recorded violations grouped: element running, kind, element that last
    /// mapped the block, how many; most first.
    pub protect_by: Vec<ProtectLine>,
}

/// Violations of one kind by one element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtectLine {
    pub element: String,
    pub kind: allocator::ProtectViolation,
    pub mapper: String,
    pub count: u64,
}

/// Protect mode's records, grouped by element running, kind and element that last mapped.
fn protect_lines() -> Vec<ProtectLine> {
    use attribution::published::name;
    let mut groups: std::collections::BTreeMap<(String, u8, String), u64> = Default::default();
    for r in allocator::protect_records() {
        *groups
            .entry((name(r.running), r.kind as u8, name(r.mapper)))
            .or_default() += 1;
    }
    let mut lines: Vec<ProtectLine> = groups
        .into_iter()
        .map(|((element, kind, mapper), count)| ProtectLine {
            element,
            kind: allocator::ProtectViolation::ALL[usize::from(kind)],
            mapper,
            count,
        })
        .collect();
    lines.sort_by_key(|l| std::cmp::Reverse(l.count));
    lines
}

/// `name` as text shows it: its control characters (a name is any C string) written as `\xNN`,
/// so that no name breaks a line of the report, a terminal or the SVG's XML (which allows no
/// control character but tab and newline, not even escaped).
pub(super) fn printable(name: &str) -> Cow<'_, str> {
    if !name.chars().any(char::is_control) {
        return Cow::Borrowed(name);
    }
    let mut out = String::with_capacity(name.len() + 8);
    for c in name.chars() {
        if c.is_control() {
            let _ = write!(out, "\\x{:02x}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Rows of the text table at most (the elements that copied, then allocated, most first):
/// a process that ran thousands of pipelines has thousands of elements, and the JSON report
/// has them all.
pub const TABLE_ROWS: usize = 40;
/// Elements named on the `COPIED BY` line at most.
pub const COPIERS: usize = 20;

/// `1536` -> `"1.5 KiB"`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

impl Report {
    /// `foreign_seen`: whether memory of other allocators is seen (see the field).
    pub fn collect(title: &str, at_exit: bool, foreign_seen: bool) -> Report {
        Report {
            title: title.to_owned(),
            at_exit,
            stats: allocator::stats(),
            live_blocks: allocator::stats::tracked_blocks(),
            guard: allocator::guard_enabled(),
            violations: allocator::stats::violations(),
            memfd: allocator::memfd::stats::to_structure(allocator::memfd::cached_bytes()),
            elements: attribution::report(),
            blocks: attribution::leaks(),
            foreign_seen,
            protect: allocator::protect_mode(),
            protect_counts: allocator::ProtectViolation::ALL
                .iter()
                .map(|&k| (k, allocator::protect_violations(k)))
                .collect(),
            protect_by: protect_lines(),
        }
    }

    /// Protect mode's line and its violations by element and kind.
    fn protect_text(&self, t: &mut String) {
        let total: u64 = self.protect_counts.iter().map(|c| c.1).sum();
        if self.protect == allocator::ProtectMode::Off && total == 0 {
            return;
        }
        let kinds: Vec<String> = self
            .protect_counts
            .iter()
            .filter(|c| c.1 > 0)
            .map(|(k, n)| format!("{} {n}", k.describe()))
            .collect();
        let mode = self.protect.nick();
        let _ = write!(t, "  protect       {mode}, {total} violations");
        if kinds.is_empty() {
            let _ = writeln!(t);
        } else {
            let _ = writeln!(t, ": {}", kinds.join(", "));
        }
        let unwritten = allocator::unwritten_reports();
        if unwritten > 0 {
            let _ = writeln!(
                t,
                "    {unwritten} of them counted but not written on stderr (past the reports \
                 written at one instruction, MEMKIT_PROTECT_REPORTS)"
            );
        }
        let unprotected = allocator::aligned::unprotected();
        if unprotected > 0 {
            let _ = writeln!(
                t,
                "    {unprotected} blocks allocated unprotected (past the mappings the system \
                 allows at once)"
            );
        }
        for l in &self.protect_by {
            let _ = writeln!(
                t,
                "    {}: {} {} (block last mapped by {})",
                printable(&l.element),
                l.kind.describe(),
                l.count,
                printable(&l.mapper)
            );
        }
        let recorded: u64 = self.protect_by.iter().map(|l| l.count).sum();
        if recorded < total {
            let _ = writeln!(
                t,
                "    ({} more not recorded by element: the first {} are)",
                total - recorded,
                allocator::MAX_PROTECT_RECORDS
            );
        }
    }

    /// The copies line and the table by element.
    fn elements_text(&self, t: &mut String) {
        let all = self.elements.iter().filter(|e| e.counts.copies > 0).count();
        let mut copiers: Vec<String> = self
            .elements
            .iter()
            .filter(|e| e.counts.copies > 0)
            .take(COPIERS)
            .map(|e| {
                format!(
                    "{} {} ({})",
                    printable(&e.name),
                    e.counts.copies,
                    human(e.counts.bytes_copied)
                )
            })
            .collect();
        if all > copiers.len() {
            copiers.push(format!("and {} more", all - copiers.len()));
        }
        if copiers.is_empty() {
            let _ = writeln!(t, "  copied by     no element: nothing was copied");
        } else {
            let _ = writeln!(t, "  COPIED BY     {}", copiers.join(", "));
        }
        if !self.elements.is_empty() {
            self.table_text(t);
        }
        self.other_memory_text(t);
    }

    /// The table by element.
    fn table_text(&self, t: &mut String) {
        let width = self
            .elements
            .iter()
            .map(|e| printable(&e.name).chars().count())
            .max()
            .unwrap_or(0)
            .clamp(7, 40);
        let _ = writeln!(
            t,
            "  by element    {:<width$} {:>8} {:>11} {:>11} {:>7} {:>11} {:>8} {:>8} {:>7}",
            "element",
            "allocs",
            "bytes",
            "peak live",
            "copies",
            "copied",
            "maps r",
            "maps w",
            "shares"
        );
        for e in self.elements.iter().take(TABLE_ROWS) {
            let _ = writeln!(
                t,
                "                {:<width$} {:>8} {:>11} {:>11} {:>7} {:>11} {:>8} {:>8} {:>7}",
                printable(&e.name),
                e.counts.allocations + e.counts.foreign_allocations,
                human(e.counts.bytes + e.counts.foreign_bytes),
                human(e.peak),
                e.counts.copies,
                human(e.counts.bytes_copied),
                e.counts.read_maps,
                e.counts.write_maps,
                e.counts.shares
            );
        }
        if self.elements.len() > TABLE_ROWS {
            let _ = writeln!(
                t,
                "                ... and {} more elements (the JSON report has them all)",
                self.elements.len() - TABLE_ROWS
            );
        }
    }

    /// What the report says of memory of other allocators.
    fn other_memory_text(&self, t: &mut String) {
        if self.foreign_seen {
            let foreign: Vec<String> = self
                .elements
                .iter()
                .filter(|e| e.counts.foreign_allocations > 0)
                .map(|e| {
                    format!(
                        "{} {} ({})",
                        printable(&e.name),
                        e.counts.foreign_allocations,
                        human(e.counts.foreign_bytes)
                    )
                })
                .collect();
            let _ = writeln!(
                t,
                "  other memory  {}",
                if foreign.is_empty() {
                    "none: every memory was memkit's".to_owned()
                } else {
                    format!("allocated by other allocators: {}", foreign.join(", "))
                }
            );
        } else {
            let _ = writeln!(
                t,
                "  other memory  not seen: memory of other allocators is counted from GStreamer \
                 1.26 (core's memory-init hook)"
            );
        }
    }

    pub fn to_text(&self) -> String {
        let s = &self.stats;
        let mut t = String::new();
        let _ = writeln!(t, "memkit report ({})", printable(&self.title));
        let _ = writeln!(
            t,
            "  allocations   {} (cache hits {}, misses {}), frees {}, wraps {}",
            s.get(Counter::Allocations),
            s.get(Counter::CacheHits),
            s.get(Counter::CacheMisses),
            s.get(Counter::Frees),
            s.get(Counter::Wraps)
        );
        let _ = writeln!(
            t,
            "  memory        peak {}, live {} in {} blocks, cached {}",
            human(s.peak_bytes),
            human(s.bytes_live),
            s.blocks_live,
            human(s.cached_bytes)
        );
        let _ = writeln!(
            t,
            "  sharing       shares {}, zero-copy merges (is_span) {}, copies {} ({}), maps {}",
            s.get(Counter::Shares),
            s.get(Counter::SpanHits),
            s.get(Counter::Copies),
            human(s.get(Counter::BytesCopied)),
            s.get(Counter::Maps)
        );
        if !s.by_class.is_empty() {
            let classes: Vec<String> = s
                .by_class
                .iter()
                .map(|&(bytes, n)| {
                    if bytes == usize::MAX {
                        format!("> 64 MiB: {n}")
                    } else {
                        format!("{}: {n}", human(bytes as u64))
                    }
                })
                .collect();
            let _ = writeln!(t, "  by size class {}", classes.join(", "));
        }
        let m = |f: &str| self.memfd.get::<u64>(f).unwrap_or(0);
        if m("allocations") + m("wraps") > 0 {
            let _ = writeln!(
                t,
                "  MemfdMemory   allocations {} (recycled {}), received {}, frees {}, live {} in {} \
                 blocks, zero-copy merges {}, copies {}",
                m("allocations"),
                m("recycled"),
                m("wraps"),
                m("frees"),
                human(m("bytes-live")),
                m("blocks-live"),
                m("span-hits"),
                m("copies")
            );
        }
        self.elements_text(&mut t);
        let _ = writeln!(
            t,
            "  guard         {}, {} violations",
            if self.guard { "on" } else { "off" },
            s.get(Counter::GuardViolations)
        );
        for v in &self.violations {
            let _ = writeln!(
                t,
                "    {}: {} damaged, bytes {}..{} of a block of maxsize {} (found {})",
                printable(v.element.as_deref().unwrap_or("unknown element")),
                v.area,
                v.range.start,
                v.range.end,
                v.block_maxsize,
                v.when
            );
        }
        self.protect_text(&mut t);
        if self.at_exit {
            let bytes: usize = self.live_blocks.iter().map(|b| b.1).sum();
            let _ = writeln!(
                t,
                "  leaks         {} blocks, {}",
                self.live_blocks.len(),
                human(bytes as u64)
            );
            let by: std::collections::HashMap<usize, &str> = self
                .blocks
                .iter()
                .map(|b| (b.address, b.element.as_str()))
                .collect();
            for (addr, size) in self.live_blocks.iter().take(20) {
                let who = by.get(addr).copied().unwrap_or(attribution::APPLICATION);
                let who = printable(who);
                let _ = writeln!(t, "    block {addr:#x}: {size} bytes, allocated by {who}");
            }
            let foreign: Vec<&attribution::Leak> =
                self.blocks.iter().filter(|b| b.foreign).collect();
            if !foreign.is_empty() {
                let bytes: usize = foreign.iter().map(|b| b.bytes).sum();
                let _ = writeln!(
                    t,
                    "  other leaks   {} memories of other allocators, {}",
                    foreign.len(),
                    human(bytes as u64)
                );
                for b in foreign.iter().take(20) {
                    let _ = writeln!(
                        t,
                        "    memory {:#x}: {} bytes, allocated by {}",
                        b.address,
                        b.bytes,
                        printable(&b.element)
                    );
                }
            }
            if self.live_blocks.len() > 20 {
                let _ = writeln!(t, "    ... and {} more", self.live_blocks.len() - 20);
            }
        } else {
            let _ = writeln!(t, "  in use        {} blocks", self.live_blocks.len());
        }
        t
    }

    pub fn to_json(&self) -> String {
        use serde_json::{Map, Value, json};
        let s = &self.stats;
        let stats: Map<String, Value> = s
            .fields()
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        let classes: Vec<Value> = s
            .by_class
            .iter()
            .map(|&(bytes, n)| {
                let bytes = (bytes != usize::MAX).then_some(bytes);
                json!({"class-bytes": bytes, "allocations": n})
            })
            .collect();
        let memfd: Map<String, Value> = self
            .memfd
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v.get::<u64>().unwrap_or(0))))
            .collect();
        let violations: Vec<Value> = self
            .violations
            .iter()
            .map(|v| {
                json!({
                    "element": v.element,
                    "area": v.area,
                    "start": v.range.start,
                    "end": v.range.end,
                    "block-maxsize": v.block_maxsize,
                    "found": v.when,
                })
            })
            .collect();
        let by: std::collections::HashMap<usize, &str> = self
            .blocks
            .iter()
            .map(|b| (b.address, b.element.as_str()))
            .collect();
        let blocks: Vec<Value> = self
            .live_blocks
            .iter()
            .map(|(a, b)| {
                let who = by.get(a).copied().unwrap_or(attribution::APPLICATION);
                json!({"address": a, "bytes": b, "element": who})
            })
            .collect();
        let foreign: Vec<Value> = self
            .blocks
            .iter()
            .filter(|b| b.foreign)
            .map(|b| json!({"address": b.address, "bytes": b.bytes, "element": b.element}))
            .collect();
        let elements: Vec<Value> = self
            .elements
            .iter()
            .map(|e| {
                json!({
                    "element": e.name,
                    "allocations": e.counts.allocations,
                    "bytes": e.counts.bytes,
                    "live-bytes": e.live,
                    "peak-live-bytes": e.peak,
                    "copies": e.counts.copies,
                    "bytes-copied": e.counts.bytes_copied,
                    "read-maps": e.counts.read_maps,
                    "write-maps": e.counts.write_maps,
                    "shares": e.counts.shares,
                    "other-allocations": e.counts.foreign_allocations,
                    "other-bytes": e.counts.foreign_bytes,
                })
            })
            .collect();
        let protect_by: Vec<serde_json::Value> = self
            .protect_by
            .iter()
            .map(|l| {
                json!({
                    "element": l.element,
                    "kind": l.kind.nick(),
                    "last-mapped-by": l.mapper,
                    "count": l.count,
                })
            })
            .collect();
        let protect_counts: serde_json::Map<String, serde_json::Value> = self
            .protect_counts
            .iter()
            .map(|(k, n)| (k.nick().to_owned(), json!(n)))
            .collect();
        let key = if self.at_exit { "leaks" } else { "in-use" };
        let mut report = json!({
            "title": self.title,
            "at-exit": self.at_exit,
            "stats": stats,
            "by-size-class": classes,
            "memfd-stats": memfd,
            "guard": self.guard,
            "violations": violations,
            "by-element": elements,
            "other-memory-seen": self.foreign_seen,
            "protect": self.protect.nick(),
            "protect-violations": protect_counts,
            "protect-by-element": protect_by,
        });
        report[key] = json!(blocks);
        let other = if self.at_exit {
            "other-leaks"
        } else {
            "other-in-use"
        };
        report[other] = json!(foreign);
        let mut text = serde_json::to_string_pretty(&report).unwrap_or_default();
        text.push('\n');
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(human(100), "100 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(3 << 20), "3.0 MiB");
    }

    #[test]
    fn control_characters_of_a_name_are_written_as_escapes() {
        assert_eq!(printable("ctl\u{1}\u{2}name"), "ctl\\x01\\x02name");
        assert_eq!(printable("a\nb\u{7f}\u{85}"), "a\\x0ab\\x7f\\x85");
        assert!(matches!(printable("plain é"), Cow::Borrowed("plain é")));
    }

    #[test]
    fn the_text_table_and_the_copiers_line_are_bounded_and_the_json_has_every_element() {
        gst::init().unwrap();
        let mut r = Report::collect("many", false, false);
        r.elements = (0..100)
            .map(|i| attribution::ElementCharges {
                name: format!("e{i}"),
                counts: attribution::slots::Counts {
                    allocations: 1,
                    copies: 1,
                    bytes_copied: 10,
                    ..Default::default()
                },
                ..Default::default()
            })
            .collect();
        let text = r.to_text();
        assert!(text.contains("e39 ") && !text.contains("e40 "), "{text}");
        assert!(text.contains("... and 60 more elements (the JSON report has them all)"));
        assert!(text.contains("e19 1 (10 B), and 80 more\n"), "{text}");
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(v["by-element"].as_array().unwrap().len(), 100);
    }

    #[test]
    fn the_json_report_parses_whatever_the_title() {
        gst::init().unwrap();
        let title = "a \"quoted\" \\ title\n\u{1}";
        let r = Report::collect(title, true, false);
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(v["title"], title);
        assert_eq!(v["at-exit"], true);
        assert!(v["leaks"].is_array() && v.get("in-use").is_none());
        assert!(v["stats"]["allocations"].is_u64());
        assert!(v["memfd-stats"]["allocations"].is_u64());
    }
}
