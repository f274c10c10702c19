// SPDX-License-Identifier: MPL-2.0
//! The tracer's report: collected from the allocator statistics, the tracked live blocks and
//! the guard violations, printed as text and written as JSON.

use std::fmt::Write as _;

use crate::allocator::{self, stats::Counter};

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
}

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

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl Report {
    pub fn collect(title: &str, at_exit: bool) -> Report {
        Report {
            title: title.to_owned(),
            at_exit,
            stats: allocator::stats(),
            live_blocks: allocator::stats::tracked_blocks(),
            guard: allocator::guard_enabled(),
            violations: allocator::stats::violations(),
            memfd: allocator::memfd::stats::to_structure(allocator::memfd::cached_bytes()),
        }
    }

    pub fn to_text(&self) -> String {
        let s = &self.stats;
        let mut t = String::new();
        let _ = writeln!(t, "memkit report ({})", self.title);
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
                v.element.as_deref().unwrap_or("unknown element"),
                v.area,
                v.range.start,
                v.range.end,
                v.block_maxsize,
                v.when
            );
        }
        if self.at_exit {
            let bytes: usize = self.live_blocks.iter().map(|b| b.1).sum();
            let _ = writeln!(
                t,
                "  leaks         {} blocks, {}",
                self.live_blocks.len(),
                human(bytes as u64)
            );
            for (addr, size) in self.live_blocks.iter().take(20) {
                let _ = writeln!(t, "    block {addr:#x}: {size} bytes");
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
        let s = &self.stats;
        let mut j = String::from("{\n");
        let _ = writeln!(j, "  \"title\": {},", json_str(&self.title));
        let _ = writeln!(j, "  \"at-exit\": {},", self.at_exit);
        j.push_str("  \"stats\": {");
        let fields: Vec<String> = s
            .fields()
            .iter()
            .map(|(k, v)| format!("{}: {v}", json_str(k)))
            .collect();
        j.push_str(&fields.join(", "));
        j.push_str("},\n");
        let classes: Vec<String> = s
            .by_class
            .iter()
            .map(|&(bytes, n)| {
                let b = if bytes == usize::MAX {
                    "null".to_owned()
                } else {
                    bytes.to_string()
                };
                format!("{{\"class-bytes\": {b}, \"allocations\": {n}}}")
            })
            .collect();
        let _ = writeln!(j, "  \"by-size-class\": [{}],", classes.join(", "));
        let memfd: Vec<String> = self
            .memfd
            .iter()
            .map(|(k, v)| format!("{}: {}", json_str(k), v.get::<u64>().unwrap_or(0)))
            .collect();
        let _ = writeln!(j, "  \"memfd-stats\": {{{}}},", memfd.join(", "));
        let _ = writeln!(j, "  \"guard\": {},", self.guard);
        let violations: Vec<String> = self
            .violations
            .iter()
            .map(|v| {
                format!(
                    "{{\"element\": {}, \"area\": {}, \"start\": {}, \"end\": {}, \"block-maxsize\": {}, \"found\": {}}}",
                    v.element.as_deref().map_or("null".to_owned(), json_str),
                    json_str(v.area),
                    v.range.start,
                    v.range.end,
                    v.block_maxsize,
                    json_str(&v.when)
                )
            })
            .collect();
        let _ = writeln!(j, "  \"violations\": [{}],", violations.join(", "));
        let blocks: Vec<String> = self
            .live_blocks
            .iter()
            .map(|(a, b)| format!("{{\"address\": {a}, \"bytes\": {b}}}"))
            .collect();
        let key = if self.at_exit { "leaks" } else { "in-use" };
        let _ = writeln!(j, "  \"{key}\": [{}]", blocks.join(", "));
        j.push_str("}\n");
        j
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes_and_json_strings() {
        assert_eq!(human(100), "100 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(3 << 20), "3.0 MiB");
        assert_eq!(json_str("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
    }
}
