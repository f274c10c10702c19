// SPDX-License-Identifier: MPL-2.0
//! What protect mode's fault handler reads: the mode, and one entry per protected mapping
//! (live or in quarantine). Atomics only; `protect.rs` writes them, `fault.rs` reads them.

use std::sync::atomic::{AtomicU8, AtomicU32, AtomicUsize, Ordering};

use crate::attribution::published;

/// Blocks (live or in quarantine) the fault handler can know at once; beyond that, blocks are
/// allocated unprotected (counted in [`unprotected`]).
pub const MAX_BLOCKS: usize = 1 << 16;

/// What protect mode does at a violation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ProtectMode {
    /// Off: blocks are allocated as usual.
    Off = 0,
    /// Report, then die of the signal as the process would have.
    Abort = 1,
    /// Report, count, make the block accessible and go on.
    Continue = 2,
}

impl ProtectMode {
    /// Its name, as `MEMKIT_GUARD` and the properties spell it.
    pub fn nick(self) -> &'static str {
        match self {
            ProtectMode::Off => "off",
            ProtectMode::Abort => "abort",
            ProtectMode::Continue => "continue",
        }
    }
}

static MODE: AtomicU8 = AtomicU8::new(0);

/// The protect mode of blocks allocated from now on.
pub fn protect_mode() -> ProtectMode {
    match MODE.load(Ordering::Relaxed) {
        1 => ProtectMode::Abort,
        2 => ProtectMode::Continue,
        _ => ProtectMode::Off,
    }
}

/// This thread's kernel id. Async-signal-safe (one system call).
pub(super) fn thread_id() -> i32 {
    // SAFETY: gettid(2) has no arguments and cannot fail.
    unsafe { libc::gettid() }
}

/// Records the mode (see `protect::set_protect_mode`, which does the rest).
pub(super) fn set_mode(mode: ProtectMode) {
    MODE.store(mode as u8, Ordering::Relaxed);
}

/// The registry the fault handler reads: one entry per protected mapping, live or in
/// quarantine. An entry is claimed by storing its `MAP_END` (non-zero) last, and released by
/// storing 0 there first.
pub(super) struct Registry {
    pub map_start: [AtomicUsize; MAX_BLOCKS],
    pub map_end: [AtomicUsize; MAX_BLOCKS],
    pub data: [AtomicUsize; MAX_BLOCKS],
    pub maxsize: [AtomicUsize; MAX_BLOCKS],
    pub readers: [AtomicU32; MAX_BLOCKS],
    pub writers: [AtomicU32; MAX_BLOCKS],
    /// 1 once the block is freed (in quarantine).
    pub freed: [AtomicU8; MAX_BLOCKS],
    /// The offset and size the block was allocated with.
    pub offset: [AtomicUsize; MAX_BLOCKS],
    pub size: [AtomicUsize; MAX_BLOCKS],
    /// The charge target (see `attribution::published`) running when the block was last
    /// mapped.
    pub mapper: [AtomicU32; MAX_BLOCKS],
    /// What continue mode opened at a violation: [`GUARD_OPENED`] (a guard page, until the
    /// block's next map or unmap), [`PAGES_OPENED`] (the block's pages: its slack is checked
    /// at free).
    pub opened: [AtomicU8; MAX_BLOCKS],
}

pub(super) static REGISTRY: Registry = Registry {
    map_start: [const { AtomicUsize::new(0) }; MAX_BLOCKS],
    map_end: [const { AtomicUsize::new(0) }; MAX_BLOCKS],
    data: [const { AtomicUsize::new(0) }; MAX_BLOCKS],
    maxsize: [const { AtomicUsize::new(0) }; MAX_BLOCKS],
    readers: [const { AtomicU32::new(0) }; MAX_BLOCKS],
    writers: [const { AtomicU32::new(0) }; MAX_BLOCKS],
    freed: [const { AtomicU8::new(0) }; MAX_BLOCKS],
    offset: [const { AtomicUsize::new(0) }; MAX_BLOCKS],
    size: [const { AtomicUsize::new(0) }; MAX_BLOCKS],
    mapper: [const { AtomicU32::new(published::NO_SLOT) }; MAX_BLOCKS],
    opened: [const { AtomicU8::new(0) }; MAX_BLOCKS],
};

/// Bits of [`Registry::opened`].
pub const GUARD_OPENED: u8 = 1;
pub const PAGES_OPENED: u8 = 2;

/// The byte the slack of a protected block's pages holds (before the region, and after it
/// when the alignment leaves room): checked when the last WRITE mapping ends and at free.
pub const SLACK_BYTE: u8 = 0xCB;
