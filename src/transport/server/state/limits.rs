// SPDX-License-Identifier: MPL-2.0
//! The bounds the producer applies, their defaults from what the process may afford, and
//! the statistics it keeps.

use std::time::Duration;

/// What to do with a consumer that is full (holds `max_outstanding` buffers, or every block
/// it may map is in use).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFull {
    /// It misses buffers until it releases some; the others go on.
    Drop,
    /// It is dropped at once.
    Disconnect,
    /// The stream waits for it, up to `full_timeout`, then drops it.
    Wait,
}

/// The bounds the producer applies; they may change while it runs.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_consumers: usize,
    pub max_outstanding: usize,
    pub on_full: OnFull,
    pub full_timeout: Duration,
    /// The most blocks (descriptors) and bytes all consumers together may pin with the
    /// buffers they hold; past either, a connection of a peer that pins more than its share
    /// is dropped, or the buffer is missed (see [`Shared::make_room`](super::Shared::make_room)).
    pub max_pinned_blocks: usize,
    pub max_pinned_bytes: u64,
}

/// What the process can afford to let consumers pin: half of its descriptors
/// (`RLIMIT_NOFILE`), at least 64.
pub fn auto_pinned_blocks() -> usize {
    let nofile = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX);
    (nofile / 2).clamp(64, 1 << 20) as usize
}

/// The most descriptors all consumers may keep in flight (unread in their socket queues, see
/// `in_flight`): a quarter of the process's descriptor limit (`RLIMIT_NOFILE`, which the
/// kernel holds them to), at least 16: the consumers within their share may take the total to
/// twice that.
pub fn auto_in_flight() -> usize {
    let nofile = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX);
    (nofile / 4).clamp(16, 1 << 20) as usize
}

/// What the process can afford to let consumers pin: a quarter of the machine's memory
/// (`MemTotal`), 1 GiB when that cannot be read.
pub fn auto_pinned_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let line = m.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib.saturating_mul(1024) / 4)
        })
        .unwrap_or(1 << 30)
}

#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub buffers: u64,
    pub bytes_sent: u64,
    pub blocks_announced: u64,
    pub consumers_connected: u64,
    pub consumers_dropped: u64,
    pub consumers_refused: u64,
    pub buffers_dropped: u64,
    pub blocks_retired: u64,
    pub released: u64,
    /// Blocks and bytes the consumers pin now.
    pub pinned_blocks: u64,
    pub pinned_bytes: u64,
    /// Consumers now, buffers they hold now.
    pub consumers: u64,
    pub outstanding: u64,
}
