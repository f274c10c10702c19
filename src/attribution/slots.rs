// SPDX-License-Identifier: MPL-2.0
//! The charge targets: a slot for each element the tracer has seen, and slot 0 for
//! "application". A slot lives while its element does or blocks it allocated do; then its
//! charges are retired into a row of the report and the slot is reused. Pure bookkeeping, no
//! GStreamer types: the caller names each element (name and path) and says when it is gone.
//!
//! **Bounds.** Every lookup, charge and retirement is constant work (hash maps and a queue).
//! Slots in use are the elements alive plus the ones gone whose blocks are still alive; a slot
//! is reused only once [`published::MAX_NAMES`] slots exist, the one retired longest ago
//! first, so that protect mode's records keep their names as long as they can. Retired rows
//! are kept for the report, the last [`MAX_RETIRED`]; older ones are added up into one.

use std::collections::{HashMap, VecDeque};

use super::published::{self, APPLICATION, APPLICATION_SLOT, MAX_NAMES, Names};

/// An index into the slots.
pub(crate) type Slot = u32;
/// An element's row for good: never reused, what the timeline's samples name.
pub(crate) type RowId = u32;

/// Retired rows kept one by one; older ones are added up.
pub(crate) const MAX_RETIRED: usize = 4096;
/// The row that adds up the retired rows past [`MAX_RETIRED`].
pub(crate) const EARLIER_ROW: RowId = RowId::MAX;

/// What a thread charges to: a slot in one of its lives (the generation). A target whose
/// slot was retired since is charged to "application".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) slot: Slot,
    pub(crate) generation: u32,
}

impl Target {
    pub(crate) const APPLICATION: Target = Target {
        slot: 0,
        generation: 0,
    };

    /// The id protect mode keeps in its records (see `published`).
    pub(crate) fn published_id(self) -> u32 {
        if self.slot == 0 {
            APPLICATION_SLOT
        } else {
            published::id(self.slot as usize, self.generation)
        }
    }
}

/// What an element did with memory: the counts the report shows for it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counts {
    pub allocations: u64,
    pub bytes: u64,
    pub shares: u64,
    pub copies: u64,
    pub bytes_copied: u64,
    pub read_maps: u64,
    pub write_maps: u64,
    /// Memory of other allocators (seen through core's `memory-init`, GStreamer 1.26+).
    pub foreign_allocations: u64,
    pub foreign_bytes: u64,
}

impl Counts {
    pub(crate) fn add(&mut self, o: &Counts) {
        self.allocations += o.allocations;
        self.bytes += o.bytes;
        self.shares += o.shares;
        self.copies += o.copies;
        self.bytes_copied += o.bytes_copied;
        self.read_maps += o.read_maps;
        self.write_maps += o.write_maps;
        self.foreign_allocations += o.foreign_allocations;
        self.foreign_bytes += o.foreign_bytes;
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.allocations
            + self.foreign_allocations
            + self.shares
            + self.copies
            + self.read_maps
            + self.write_maps
            == 0
    }
}

/// One slot's charges.
#[derive(Debug, Default, Clone)]
pub(crate) struct Raw {
    pub(crate) counts: Counts,
    /// Bytes of the blocks it allocated alive now, and the most of them at once.
    pub(crate) live: u64,
    pub(crate) peak: u64,
    /// Blocks it allocated alive now: it is not retired before they are freed.
    pub(crate) blocks: u64,
    /// The least and the most of `live` since the timeline's last sample.
    pub(crate) low: u64,
    pub(crate) high: u64,
    /// Whether the timeline follows it one by one (see `State::change_live`).
    pub(crate) tracked: bool,
    /// Whether the next sample reads it (followed, and it changed or holds bytes).
    pub(crate) listed: bool,
}

struct Entry {
    generation: u32,
    row: RowId,
    /// The element's address while it lives.
    addr: Option<usize>,
    name: String,
    path: String,
    in_use: bool,
    raw: Raw,
}

/// An element's row of the report: its name, path and charges.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub(crate) row: RowId,
    pub(crate) name: String,
    pub(crate) path: String,
    pub(crate) counts: Counts,
    pub(crate) live: u64,
    pub(crate) peak: u64,
}

pub(crate) struct Slots {
    /// Where the names are published for protect mode.
    names: &'static Names,
    entries: Vec<Entry>,
    by_addr: HashMap<usize, Slot>,
    /// Slots in use by name: names that collide are published as paths.
    by_name: HashMap<String, Vec<Slot>>,
    /// Slots retired, the longest ago first.
    free: VecDeque<Slot>,
    retired: VecDeque<Row>,
    /// The rows retired past [`MAX_RETIRED`], added up, and how many.
    earlier: Option<(u64, Row)>,
    next_row: RowId,
}

impl Default for Slots {
    fn default() -> Self {
        Slots::new(published::table())
    }
}

impl Slots {
    /// Slots publishing their names in `names`.
    pub(crate) fn new(names: &'static Names) -> Self {
        Slots {
            names,
            entries: vec![Entry {
                generation: 0,
                row: 0,
                addr: None,
                name: APPLICATION.to_owned(),
                path: APPLICATION.to_owned(),
                in_use: true,
                raw: Raw::default(),
            }],
            by_addr: HashMap::new(),
            by_name: HashMap::new(),
            free: VecDeque::new(),
            retired: VecDeque::new(),
            earlier: None,
            next_row: 1,
        }
    }

    /// The target of the element at `addr`, if it is registered.
    pub(crate) fn lookup(&self, addr: usize) -> Option<Target> {
        self.by_addr.get(&addr).map(|&slot| self.target(slot))
    }

    pub(crate) fn target(&self, slot: Slot) -> Target {
        Target {
            slot,
            generation: self.entries[slot as usize].generation,
        }
    }

    /// Registers the element at `addr` (if it is not yet) under `name` and `path`.
    pub(crate) fn register(&mut self, addr: usize, name: &str, path: &str) -> Target {
        if let Some(target) = self.lookup(addr) {
            return target;
        }
        let row = self.next_row;
        self.next_row = self.next_row.saturating_add(1).min(EARLIER_ROW - 1);
        let entry = Entry {
            generation: 0,
            row,
            addr: Some(addr),
            name: name.to_owned(),
            path: path.to_owned(),
            in_use: true,
            raw: Raw::default(),
        };
        let reuse = if self.entries.len() >= MAX_NAMES {
            self.free.pop_front()
        } else {
            None
        };
        let slot = match reuse {
            Some(slot) => {
                let e = &mut self.entries[slot as usize];
                *e = Entry {
                    generation: e.generation,
                    ..entry
                };
                slot
            }
            None => {
                self.entries.push(entry);
                (self.entries.len() - 1) as Slot
            }
        };
        self.by_addr.insert(addr, slot);
        self.name_in(slot);
        self.target(slot)
    }

    /// Adds `slot` to the slots of its name, and publishes the names of those: paths when
    /// there are several.
    fn name_in(&mut self, slot: Slot) {
        let name = self.entries[slot as usize].name.clone();
        let slots = self.by_name.entry(name).or_default();
        slots.push(slot);
        let slots = slots.clone();
        let collide = slots.len() > 1;
        for s in slots {
            let e = &self.entries[s as usize];
            let shown = if collide { &e.path } else { &e.name };
            self.names.set_name(self.target(s).published_id(), shown);
        }
    }

    /// Takes `slot` out of the slots of its name; one left alone with it is published by its
    /// name again, no longer by its path.
    fn name_out(&mut self, slot: Slot) {
        let name = &self.entries[slot as usize].name;
        let Some(slots) = self.by_name.get_mut(name) else {
            return;
        };
        slots.retain(|&s| s != slot);
        let alone = match slots.as_slice() {
            [] => {
                self.by_name.remove(name);
                None
            }
            &[one] => Some(one),
            _ => None,
        };
        if let Some(one) = alone {
            let shown = &self.entries[one as usize].name;
            self.names.set_name(self.target(one).published_id(), shown);
        }
    }

    /// The element of `target` is now called `name`, at `path` (renamed, or added to a bin).
    pub(crate) fn rename(&mut self, target: Target, name: &str, path: &str) {
        let Some(slot) = self.valid(target) else {
            return;
        };
        let e = &self.entries[slot as usize];
        if e.name == name && e.path == path {
            return;
        }
        self.name_out(slot);
        let e = &mut self.entries[slot as usize];
        e.name = name.to_owned();
        e.path = path.to_owned();
        self.name_in(slot);
    }

    /// The slot of `target` if it is still in that life; `None` for "application" too.
    pub(crate) fn valid(&self, target: Target) -> Option<Slot> {
        let e = self.entries.get(target.slot as usize)?;
        (target.slot != 0 && e.in_use && e.generation == target.generation).then_some(target.slot)
    }

    /// The slot charges to `target` go to: its own, or "application"'s when it was retired.
    pub(crate) fn charged(&self, target: Target) -> Slot {
        self.valid(target).unwrap_or(0)
    }

    pub(crate) fn raw(&mut self, slot: Slot) -> &mut Raw {
        &mut self.entries[slot as usize].raw
    }

    pub(crate) fn row_of(&self, slot: Slot) -> RowId {
        self.entries[slot as usize].row
    }

    /// The name `slot` is shown under now: its path when another element in use has its
    /// name.
    pub(crate) fn shown_name(&self, slot: Slot) -> String {
        let e = &self.entries[slot as usize];
        match self.by_name.get(&e.name) {
            Some(slots) if slots.len() > 1 => e.path.clone(),
            _ => e.name.clone(),
        }
    }

    /// The element at `addr` is gone: its slot is retired once no block of its is alive.
    /// Whether it was registered.
    pub(crate) fn forget(&mut self, addr: usize) -> bool {
        let Some(slot) = self.by_addr.remove(&addr) else {
            return false;
        };
        self.entries[slot as usize].addr = None;
        self.retire_if_done(slot);
        true
    }

    /// Retires `slot` if its element is gone, no block of its is alive and the timeline has
    /// read its last change.
    pub(crate) fn retire_if_done(&mut self, slot: Slot) {
        let e = &self.entries[slot as usize];
        if slot == 0 || !e.in_use || e.addr.is_some() || e.raw.blocks > 0 || e.raw.listed {
            return;
        }
        self.name_out(slot);
        let e = &mut self.entries[slot as usize];
        let raw = std::mem::take(&mut e.raw);
        let row = Row {
            row: e.row,
            name: std::mem::take(&mut e.name),
            path: std::mem::take(&mut e.path),
            counts: raw.counts,
            live: raw.live,
            peak: raw.peak,
        };
        e.in_use = false;
        e.generation = e.generation.wrapping_add(1);
        self.free.push_back(slot);
        if row.counts.is_empty() {
            return;
        }
        self.retired.push_back(row);
        if self.retired.len() > MAX_RETIRED
            && let Some(old) = self.retired.pop_front()
        {
            let (n, sum) = self.earlier.get_or_insert_with(|| {
                (
                    0,
                    Row {
                        row: EARLIER_ROW,
                        name: String::new(),
                        path: String::new(),
                        counts: Counts::default(),
                        live: 0,
                        peak: 0,
                    },
                )
            });
            *n += 1;
            sum.counts.add(&old.counts);
            sum.peak = sum.peak.max(old.peak);
            let name = format!("{n} earlier elements");
            sum.name.clone_from(&name);
            sum.path = name;
        }
    }

    /// Every row with charges: the slots in use, then the retired ones.
    pub(crate) fn rows(&self) -> Vec<Row> {
        let live = self.entries.iter().filter(|e| e.in_use).map(|e| Row {
            row: e.row,
            name: e.name.clone(),
            path: e.path.clone(),
            counts: e.raw.counts.clone(),
            live: e.raw.live,
            peak: e.raw.peak,
        });
        let earlier = self.earlier.iter().map(|(_, r)| r.clone());
        live.chain(self.retired.iter().cloned())
            .chain(earlier)
            .filter(|r| !r.counts.is_empty())
            .collect()
    }

    /// Slots in use (for the bound's tests).
    #[cfg(test)]
    pub(crate) fn in_use(&self) -> usize {
        self.entries.iter().filter(|e| e.in_use).count()
    }

    /// Slots made so far (for the bound's tests).
    #[cfg(test)]
    pub(crate) fn made(&self) -> usize {
        self.entries.len()
    }
}

/// The names `rows` are shown under: an element's name, its path where names collide, and a
/// number after a path that collides still (two pipelines of the same name, one after the
/// other).
pub(crate) fn shown_names(rows: &[Row]) -> Vec<String> {
    let mut count: HashMap<&str, usize> = HashMap::new();
    for r in rows {
        *count.entry(r.name.as_str()).or_default() += 1;
    }
    let chosen: Vec<&str> = rows
        .iter()
        .map(|r| {
            if count[r.name.as_str()] > 1 {
                r.path.as_str()
            } else {
                r.name.as_str()
            }
        })
        .collect();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut total: HashMap<&str, usize> = HashMap::new();
    for c in &chosen {
        *total.entry(c).or_default() += 1;
    }
    chosen
        .iter()
        .map(|c| {
            let k = seen.entry(c).or_default();
            *k += 1;
            if total[c] > 1 && *k > 1 {
                format!("{c} ({k})")
            } else {
                (*c).to_owned()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Slots with a name table of their own: tests run at once.
    fn slots() -> Slots {
        Slots::new(Box::leak(Box::new(Names::new())))
    }

    fn charge(s: &mut Slots, t: Target, bytes: u64) {
        let slot = s.charged(t);
        let r = s.raw(slot);
        r.counts.allocations += 1;
        r.counts.bytes += bytes;
    }

    #[test]
    fn an_element_keeps_its_slot_and_a_gone_one_is_retired_into_a_row() {
        let mut s = slots();
        let a = s.register(0x10, "a", "p/a");
        assert_eq!(s.register(0x10, "a", "p/a"), a, "registered once");
        assert_eq!(s.lookup(0x10), Some(a));
        charge(&mut s, a, 100);
        assert!(s.forget(0x10));
        assert!(!s.forget(0x10), "once");
        assert_eq!(s.lookup(0x10), None);
        assert_eq!(s.charged(a), 0, "a retired target charges application");
        let rows = s.rows();
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].name.as_str(), rows[0].counts.bytes), ("a", 100));
    }

    #[test]
    fn a_slot_with_blocks_alive_is_retired_when_the_last_is_freed() {
        let mut s = slots();
        let a = s.register(0x10, "a", "p/a");
        s.raw(a.slot).blocks = 1;
        s.forget(0x10);
        assert_eq!(s.charged(a), a.slot, "still in use: its block is alive");
        s.raw(a.slot).blocks = 0;
        s.retire_if_done(a.slot);
        assert_eq!(s.charged(a), 0);
    }

    #[test]
    fn slots_are_reused_oldest_retired_first_once_the_names_are_all_given() {
        let mut s = slots();
        let mut first_gone = None;
        for i in 0..3 * MAX_NAMES {
            let t = s.register(0x1000 + i, &format!("e{i}"), &format!("p/e{i}"));
            charge(&mut s, t, 1);
            s.forget(0x1000 + i);
            first_gone.get_or_insert(t);
            assert!(
                s.made() <= MAX_NAMES,
                "{} slots after {i} elements",
                s.made()
            );
        }
        assert_eq!(s.in_use(), 1, "application only");
        let late = s.register(1, "late", "p/late");
        assert_eq!(
            s.names.name(late.published_id()),
            "late",
            "named past 4,096"
        );
        let first = first_gone.unwrap();
        assert_ne!(
            s.names.name(first.published_id()),
            "late",
            "an id of a slot reused never reads the newcomer's name"
        );
        let rows = s.rows();
        assert_eq!(
            rows.len(),
            MAX_RETIRED + 1,
            "the last retired, and the earlier added up"
        );
        let earlier = rows.iter().find(|r| r.row == EARLIER_ROW).unwrap();
        assert_eq!(
            earlier.counts.allocations as usize,
            3 * MAX_NAMES - MAX_RETIRED
        );
        let total: u64 = rows.iter().map(|r| r.counts.allocations).sum();
        assert_eq!(total as usize, 3 * MAX_NAMES, "nothing lost");
    }

    #[test]
    fn colliding_names_show_paths_and_a_rename_is_followed() {
        let mut s = slots();
        let a = s.register(0x10, "src", "pipeline0/src");
        let b = s.register(0x20, "src", "pipeline1/src");
        assert_eq!(s.shown_name(a.slot), "pipeline0/src");
        assert_eq!(s.names.name(b.published_id()), "pipeline1/src");
        s.rename(b, "other", "pipeline1/other");
        assert_eq!(s.shown_name(b.slot), "other");
        assert_eq!(s.names.name(b.published_id()), "other");
        charge(&mut s, a, 1);
        charge(&mut s, b, 1);
        let rows = s.rows();
        let names = shown_names(&rows);
        assert_eq!(names, ["src", "other"]);
    }

    #[test]
    fn when_a_colliding_name_leaves_the_other_is_published_by_its_name_again() {
        let mut s = slots();
        let a = s.register(0x10, "src", "p0/src");
        s.register(0x20, "src", "p1/src");
        assert_eq!(s.names.name(a.published_id()), "p0/src");
        s.forget(0x20);
        assert_eq!(s.shown_name(a.slot), "src");
        assert_eq!(
            s.names.name(a.published_id()),
            "src",
            "what protect mode reads too"
        );
    }

    #[test]
    fn shown_names_use_paths_where_names_collide_then_numbers() {
        let row = |name: &str, path: &str| Row {
            row: 0,
            name: name.into(),
            path: path.into(),
            counts: Counts::default(),
            live: 0,
            peak: 0,
        };
        let rows = [
            row("src", "p0/src"),
            row("src", "p1/src"),
            row("sink", "p0/sink"),
            row("src", "p1/src"),
        ];
        assert_eq!(
            shown_names(&rows),
            ["p0/src", "p1/src", "sink", "p1/src (2)"]
        );
    }
}
