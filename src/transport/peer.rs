// SPDX-License-Identifier: MPL-2.0
//! What the producer knows of one consumer: the blocks it has mapped (announced and not yet
//! retired), every block it was ever sent (retired for good when it leaves: it may keep its
//! mappings), the buffers it holds and the descriptors it may not have read yet; and
//! [`Pins`], what all consumers together keep alive.
//! Pure bookkeeping, no sockets: the server sends what [`Peer::plan`] decides.

use std::collections::{HashMap, HashSet, VecDeque};

use super::wire::BlockWire;

/// Why a buffer cannot go to this consumer now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// It holds `max-outstanding` buffers.
    Outstanding,
    /// Every block it has mapped is in use by a buffer it holds, and the new ones would take
    /// it past the bound it gave in its hello.
    Blocks,
    /// The descriptors sent to it that it has not shown it read (in flight in its socket
    /// queue, charged by the kernel to the producer's user) would pass its share.
    InFlight,
}

/// What to send a consumer with one buffer: the blocks to retire first, the blocks to
/// announce (with a descriptor each).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub retire: Vec<u64>,
    pub announce: Vec<BlockWire>,
    /// Retired to make room (rather than freed): restored if the buffer is not sent.
    evicted: Vec<(u64, u64)>,
    /// Blocks this buffer sends it for the first time: forgotten if the buffer is not sent
    /// (a block sent before stays to be retired when it leaves: it may keep it mapped).
    fresh: Vec<u64>,
}

/// One consumer, holding `H` for each buffer it has not released (what keeps the buffer's
/// blocks alive and out of the producer's cache).
#[derive(Debug)]
pub struct Peer<H> {
    pub id: u64,
    /// The most blocks it maps at once (its hello), `None` before the hello.
    max_blocks: Option<usize>,
    /// Blocks mapped, with the sequence number of their last use.
    mapped: HashMap<u64, u64>,
    /// Every block ever announced to it and not yet freed.
    ever: HashSet<u64>,
    /// Buffers sent and not released: what is held, and the blocks they use.
    outstanding: HashMap<u64, (H, Vec<u64>)>,
    /// Blocks to retire with the next buffer (freed at the producer).
    pending_retire: Vec<u64>,
    /// Buffers sent with descriptors, oldest first, that it has not shown it read (a
    /// release of a buffer shows it read every packet up to it: the socket keeps their
    /// order), with how many descriptors each carried; and their sum.
    in_flight: VecDeque<(u64, usize)>,
    in_flight_fds: usize,
    seq: u64,
    /// It released a buffer once: it reads what it is sent.
    released: bool,
}

impl<H> Peer<H> {
    pub fn new(id: u64) -> Self {
        Peer {
            id,
            max_blocks: None,
            mapped: HashMap::new(),
            ever: HashSet::new(),
            outstanding: HashMap::new(),
            pending_retire: Vec::new(),
            in_flight: VecDeque::new(),
            in_flight_fds: 0,
            seq: 0,
            released: false,
        }
    }

    /// Its hello: the most blocks it keeps mapped. `Err` when that cannot hold one buffer.
    pub fn hello(&mut self, max_blocks: u32, per_buffer: usize) -> Result<(), String> {
        if (max_blocks as usize) < per_buffer {
            return Err(format!(
                "maps at most {max_blocks} blocks, fewer than one buffer may need ({per_buffer})"
            ));
        }
        self.max_blocks = Some(max_blocks as usize);
        Ok(())
    }

    /// Whether it ever released a buffer it was sent (it reads, and gives back).
    pub fn has_released(&self) -> bool {
        self.released
    }

    /// Whether a buffer was ever planned for it.
    pub fn was_sent(&self) -> bool {
        self.seq > 0
    }

    /// Whether it said hello (before that it is sent events, not buffers).
    pub fn ready(&self) -> bool {
        self.max_blocks.is_some()
    }

    pub fn outstanding(&self) -> usize {
        self.outstanding.len()
    }

    /// Descriptors sent to it (planned, until a send fails) that it has not shown it read.
    pub fn in_flight(&self) -> usize {
        self.in_flight_fds
    }

    #[cfg(test)]
    pub fn mapped(&self) -> usize {
        self.mapped.len()
    }

    /// How many buffers were planned for it (sent or not).
    #[cfg(test)]
    pub fn planned(&self) -> u64 {
        self.seq
    }

    /// Plans sending buffer `id`, whose memories lie in `blocks` (id and size each, repeats
    /// allowed), holding `hold` until it is released. Blocks it has not mapped are announced;
    /// to stay within its bound, blocks it maps but no held buffer uses are retired, least
    /// recently used first.
    /// At most `max_retire` blocks are retired with it (what the packet has room for; the
    /// rest wait for the next buffer), the evicted ones always.
    pub fn plan(
        &mut self,
        id: u64,
        blocks: &[BlockWire],
        hold: H,
        max_outstanding: usize,
        max_retire: usize,
    ) -> Result<Plan, Full> {
        let (announce, over) = self.needs(blocks, max_outstanding)?;
        let evicted = self.evict(over, blocks);
        self.seq += 1;
        let mut fresh = Vec::new();
        for b in blocks {
            self.mapped.insert(b.id, self.seq);
            if self.ever.insert(b.id) {
                fresh.push(b.id);
            }
        }
        self.outstanding.insert(id, (hold, distinct(blocks)));
        if !announce.is_empty() {
            self.in_flight.push_back((id, announce.len()));
            self.in_flight_fds += announce.len();
        }
        let mut retire: Vec<u64> = evicted.iter().map(|&(b, _)| b).collect();
        let room = max_retire
            .saturating_sub(retire.len())
            .min(self.pending_retire.len());
        retire.extend(self.pending_retire.drain(..room));
        Ok(Plan {
            retire,
            announce,
            evicted,
            fresh,
        })
    }

    /// Whether a buffer in `blocks` can go to it now (what [`plan`](Self::plan) checks).
    pub fn fits(&self, blocks: &[BlockWire], max_outstanding: usize) -> Result<(), Full> {
        self.needs(blocks, max_outstanding).map(|_| ())
    }

    /// The blocks to announce for a buffer in `blocks`, and how many mapped blocks must be
    /// retired first to stay within the bound; `Err` when that many are not idle.
    fn needs(
        &self,
        blocks: &[BlockWire],
        max_outstanding: usize,
    ) -> Result<(Vec<BlockWire>, usize), Full> {
        if self.outstanding.len() >= max_outstanding {
            return Err(Full::Outstanding);
        }
        let mut announce: Vec<BlockWire> = Vec::new();
        for b in blocks {
            if !self.mapped.contains_key(&b.id) && !announce.iter().any(|a| a.id == b.id) {
                announce.push(*b);
            }
        }
        let max = self.max_blocks.unwrap_or(0);
        let over = (self.mapped.len() + announce.len()).saturating_sub(max);
        if over > 0 && self.idle(blocks).len() < over {
            return Err(Full::Blocks);
        }
        Ok((announce, over))
    }

    /// Mapped blocks that neither a held buffer nor `blocks` uses, with their last use.
    fn idle(&self, blocks: &[BlockWire]) -> Vec<(u64, u64)> {
        let busy: HashSet<u64> = self
            .outstanding
            .values()
            .flat_map(|(_, ids)| ids.iter().copied())
            .chain(blocks.iter().map(|b| b.id))
            .collect();
        self.mapped
            .iter()
            .filter(|(b, _)| !busy.contains(b))
            .map(|(&b, &seq)| (b, seq))
            .collect()
    }

    /// Retires the `n` least recently used idle blocks (checked to exist by `needs`) from
    /// the mapped set; returns them with their last use, to restore them.
    fn evict(&mut self, n: usize, blocks: &[BlockWire]) -> Vec<(u64, u64)> {
        if n == 0 {
            return Vec::new();
        }
        let mut idle = self.idle(blocks);
        idle.sort_unstable_by_key(|&(_, seq)| seq);
        idle.truncate(n);
        for (b, _) in &idle {
            self.mapped.remove(b);
        }
        idle
    }

    /// The oldest buffer it holds (the lowest id: ids grow).
    pub fn oldest(&self) -> Option<u64> {
        self.outstanding.keys().min().copied()
    }

    /// The blocks the buffers it holds use (each once).
    pub fn held_blocks(&self) -> HashSet<u64> {
        self.outstanding
            .values()
            .flat_map(|(_, ids)| ids.iter().copied())
            .collect()
    }

    /// Undoes [`plan`](Self::plan) for a buffer that was not sent after all (its socket was
    /// full): it holds nothing and maps what it mapped before, and the blocks it was sent
    /// before stay to be retired when it leaves. Returns what was held for it and its blocks.
    pub fn unsend(&mut self, id: u64, plan: Plan) -> Option<(H, Vec<u64>)> {
        for b in &plan.announce {
            self.mapped.remove(&b.id);
        }
        for b in &plan.fresh {
            self.ever.remove(b);
        }
        if let Some(pos) = self.in_flight.iter().rposition(|&(b, _)| b == id) {
            let (_, n) = self.in_flight.remove(pos).unwrap_or_default();
            self.in_flight_fds -= n;
        }
        self.mapped.extend(plan.evicted.iter().copied());
        let freed: Vec<u64> = plan
            .retire
            .into_iter()
            .filter(|b| !plan.evicted.iter().any(|(e, _)| e == b))
            .collect();
        self.pending_retire.splice(0..0, freed);
        self.outstanding.remove(&id)
    }

    /// It read every packet of the buffers before `id` (its socket queue held none of ours):
    /// their descriptors are no longer in flight.
    pub fn read_before(&mut self, id: u64) {
        while let Some(&(b, n)) = self.in_flight.front() {
            if b >= id {
                break;
            }
            self.in_flight.pop_front();
            self.in_flight_fds -= n;
        }
    }

    /// It released buffer `id`: what was held for it and its blocks, if it held it. It read
    /// the packet of that buffer, and so every packet before it: their descriptors are no
    /// longer in flight.
    pub fn release(&mut self, id: u64) -> Option<(H, Vec<u64>)> {
        let held = self.outstanding.remove(&id)?;
        self.released = true;
        while let Some(&(b, n)) = self.in_flight.front() {
            if b > id {
                break;
            }
            self.in_flight.pop_front();
            self.in_flight_fds -= n;
        }
        Some(held)
    }

    /// Blocks freed at the producer: those it maps are retired with the next buffer.
    pub fn freed(&mut self, ids: &[u64]) {
        for id in ids {
            self.ever.remove(id);
            if self.mapped.remove(id).is_some() {
                self.pending_retire.push(*id);
            }
        }
    }

    /// It left: every block it was ever sent that is still alive (to retire for good), and
    /// what it held with the blocks of each.
    pub fn leave(self) -> (Vec<u64>, Vec<(H, Vec<u64>)>) {
        (
            self.ever.into_iter().collect(),
            self.outstanding.into_values().collect(),
        )
    }
}

/// The ids of `blocks`, each once.
fn distinct(blocks: &[BlockWire]) -> Vec<u64> {
    let mut ids: Vec<u64> = blocks.iter().map(|b| b.id).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// What all consumers together pin: the blocks their unreleased buffers keep alive (each a
/// descriptor and its bytes at the producer), counted once however many buffers and
/// consumers hold them.
#[derive(Debug, Default)]
pub struct Pins {
    /// Block id: holds (a buffer of a consumer), and its size.
    blocks: HashMap<u64, (usize, u64)>,
    bytes: u64,
}

impl Pins {
    /// Blocks pinned.
    pub fn count(&self) -> usize {
        self.blocks.len()
    }

    /// Bytes pinned.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// A buffer in `blocks` is held once more.
    pub fn pin(&mut self, blocks: &[BlockWire]) {
        for b in blocks.iter().filter(|b| distinct_first(blocks, b)) {
            let entry = self.blocks.entry(b.id).or_insert((0, b.size));
            if entry.0 == 0 {
                self.bytes += b.size;
            }
            entry.0 += 1;
        }
    }

    /// A buffer whose blocks are `ids` (each once) is held once less.
    pub fn unpin(&mut self, ids: &[u64]) {
        for id in ids {
            if let Some(entry) = self.blocks.get_mut(id) {
                entry.0 -= 1;
                if entry.0 == 0 {
                    self.bytes -= entry.1;
                    self.blocks.remove(id);
                }
            }
        }
    }

    /// The blocks and bytes a buffer in `blocks` would add.
    pub fn added(&self, blocks: &[BlockWire]) -> (usize, u64) {
        blocks
            .iter()
            .filter(|b| distinct_first(blocks, b) && !self.blocks.contains_key(&b.id))
            .fold((0, 0), |(n, bytes), b| (n + 1, bytes + b.size))
    }

    /// The bytes of `ids` that are pinned.
    pub fn bytes_of(&self, ids: &HashSet<u64>) -> u64 {
        ids.iter()
            .filter_map(|id| self.blocks.get(id))
            .map(|e| e.1)
            .sum()
    }
}

/// Whether `b` is the first block of `blocks` with its id.
fn distinct_first(blocks: &[BlockWire], b: &BlockWire) -> bool {
    blocks
        .iter()
        .find(|x| x.id == b.id)
        .is_some_and(|x| std::ptr::eq(x, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blk(id: u64) -> BlockWire {
        BlockWire { id, size: 4096 }
    }

    fn peer(max_blocks: u32) -> Peer<u64> {
        let mut p = Peer::new(1);
        p.hello(max_blocks, 1).unwrap();
        p
    }

    #[test]
    fn a_block_is_announced_once() {
        let mut p = peer(8);
        let first = p
            .plan(1, &[blk(10), blk(10), blk(11)], 1, 64, 4096)
            .unwrap();
        assert_eq!(first.announce, vec![blk(10), blk(11)]);
        let again = p.plan(2, &[blk(11), blk(10)], 2, 64, 4096).unwrap();
        assert!(again.announce.is_empty() && again.retire.is_empty());
        assert_eq!(p.mapped(), 2);
    }

    #[test]
    fn the_bound_is_kept_by_retiring_the_least_recently_used_idle_block() {
        let mut p = peer(2);
        p.plan(1, &[blk(1)], 1, 64, 4096).unwrap();
        p.plan(2, &[blk(2)], 2, 64, 4096).unwrap();
        p.release(1);
        p.release(2);
        p.plan(3, &[blk(1)], 3, 64, 4096).unwrap(); // block 1 used again: block 2 is older
        p.release(3);
        let plan = p.plan(4, &[blk(3)], 4, 64, 4096).unwrap();
        assert_eq!(plan.retire, vec![2]);
        assert_eq!(plan.announce, vec![blk(3)]);
        assert_eq!(p.mapped(), 2);
    }

    #[test]
    fn blocks_in_held_buffers_are_never_evicted() {
        let mut p = peer(2);
        p.plan(1, &[blk(1)], 1, 64, 4096).unwrap();
        p.plan(2, &[blk(2)], 2, 64, 4096).unwrap();
        assert_eq!(p.fits(&[blk(3)], 64), Err(Full::Blocks));
        assert_eq!(
            p.fits(&[blk(2)], 64),
            Ok(()),
            "a mapped block needs no room"
        );
        assert_eq!(p.plan(3, &[blk(3)], 3, 64, 4096), Err(Full::Blocks));
        assert_eq!(p.mapped(), 2, "a refused plan changes nothing");
        p.release(1);
        assert_eq!(p.plan(3, &[blk(3)], 3, 64, 4096).unwrap().retire, vec![1]);
    }

    #[test]
    fn max_outstanding_is_a_bound() {
        let mut p = peer(8);
        p.plan(1, &[blk(1)], 1, 1, 4096).unwrap();
        assert_eq!(p.plan(2, &[blk(1)], 2, 1, 4096), Err(Full::Outstanding));
        assert_eq!(p.release(1), Some((1, vec![1])));
        assert_eq!(
            p.release(1),
            None,
            "a second release of the same buffer is nothing"
        );
        assert!(p.plan(2, &[blk(1)], 2, 1, 4096).is_ok());
    }

    #[test]
    fn unsend_restores_what_the_consumer_maps() {
        let mut p = peer(1);
        p.plan(1, &[blk(1)], 1, 64, 4096).unwrap();
        p.release(1);
        p.freed(&[7]); // not mapped: nothing to retire
        let plan = p.plan(2, &[blk(2)], 2, 64, 4096).unwrap();
        assert_eq!(plan.retire, vec![1]);
        assert_eq!(p.unsend(2, plan), Some((2, vec![2])));
        // As before: block 1 mapped, so the next buffer evicts it again.
        let plan = p.plan(3, &[blk(2)], 3, 64, 4096).unwrap();
        assert_eq!((plan.retire, plan.announce), (vec![1], vec![blk(2)]));
    }

    #[test]
    fn a_failed_send_keeps_the_blocks_sent_before_to_be_retired() {
        // Review of issue 27: a buffer re-announcing a block the consumer was sent before
        // (evicted from its mapped set to keep its bound) was not sent (socket full), and
        // `unsend` forgot the block: not retired when the consumer left, so recycled for
        // later frames the consumer, keeping its first descriptor, could read.
        let mut p = peer(1);
        p.plan(1, &[blk(1)], 1, 64, 4096).unwrap();
        p.release(1);
        p.plan(2, &[blk(2)], 2, 64, 4096).unwrap(); // block 1 evicted
        p.release(2);
        let plan = p.plan(3, &[blk(1)], 3, 64, 4096).unwrap();
        assert_eq!(plan.announce, vec![blk(1)], "block 1 is announced again");
        p.unsend(3, plan);
        let plan = p.plan(4, &[blk(3)], 4, 64, 4096).unwrap();
        p.unsend(4, plan); // block 3 was never sent: nothing to retire
        let (mut ever, _) = p.leave();
        ever.sort_unstable();
        assert_eq!(ever, vec![1, 2], "a block sent before was forgotten");
    }

    #[test]
    fn descriptors_stay_in_flight_until_a_release_shows_they_were_read() {
        let mut p = peer(8);
        p.plan(1, &[blk(1), blk(2)], 1, 64, 4096).unwrap(); // two descriptors
        p.plan(2, &[blk(1)], 2, 64, 4096).unwrap(); // none
        p.plan(3, &[blk(3)], 3, 64, 4096).unwrap(); // one
        assert_eq!(p.in_flight(), 3);
        let plan = p.plan(4, &[blk(4)], 4, 64, 4096).unwrap();
        assert_eq!(p.in_flight(), 4);
        p.unsend(4, plan);
        assert_eq!(p.in_flight(), 3, "a packet not sent is not in flight");
        assert!(p.release(2).is_some()); // it read buffers 1 and 2
        assert_eq!(p.in_flight(), 1);
        assert!(p.release(9).is_none()); // not held: shows nothing
        assert_eq!(p.in_flight(), 1);
        assert!(p.release(3).is_some());
        assert_eq!(p.in_flight(), 0);
    }

    #[test]
    fn freed_blocks_are_retired_with_the_next_buffer_and_forgotten() {
        let mut p = peer(8);
        p.plan(1, &[blk(1), blk(2)], 1, 64, 4096).unwrap();
        p.freed(&[1]);
        let plan = p.plan(2, &[blk(2)], 2, 64, 4096).unwrap();
        assert_eq!(plan.retire, vec![1]);
        let (ever, held) = p.leave();
        assert_eq!(ever, vec![2], "a freed block is not retired again");
        let mut held = held;
        held.sort();
        assert_eq!(held, vec![(1, vec![1, 2]), (2, vec![2])]);
    }

    #[test]
    fn retirements_wait_for_room_in_the_packet() {
        let mut p = peer(8);
        p.plan(1, &[blk(1), blk(2), blk(3)], 1, 64, 4096).unwrap();
        p.freed(&[1, 2, 3]);
        assert_eq!(p.plan(2, &[blk(4)], 2, 64, 2).unwrap().retire, vec![1, 2]);
        assert_eq!(p.plan(3, &[blk(4)], 3, 64, 2).unwrap().retire, vec![3]);
    }

    #[test]
    fn pins_count_each_block_once_until_its_last_holder_lets_go() {
        let mut pins = Pins::default();
        let a = BlockWire { id: 1, size: 100 };
        let b = BlockWire { id: 2, size: 10 };
        assert_eq!(pins.added(&[a, a, b]), (2, 110));
        pins.pin(&[a, a, b]); // one buffer, block 1 twice
        pins.pin(&[a]); // another consumer holds block 1 too
        assert_eq!((pins.count(), pins.bytes()), (2, 110));
        assert_eq!(pins.added(&[a, b]), (0, 0));
        pins.unpin(&[1, 2]);
        assert_eq!((pins.count(), pins.bytes()), (1, 100));
        assert_eq!(pins.bytes_of(&HashSet::from([1, 2])), 100);
        pins.unpin(&[1]);
        assert_eq!((pins.count(), pins.bytes()), (0, 0));
        pins.unpin(&[1]); // nothing left: no underflow
        assert_eq!(pins.count(), 0);
    }

    #[test]
    fn a_hello_too_small_for_one_buffer_is_refused() {
        let mut p: Peer<()> = Peer::new(1);
        assert!(!p.ready());
        assert!(p.hello(3, 16).is_err());
        assert!(!p.ready());
        p.hello(16, 16).unwrap();
        assert!(p.ready());
    }
}
