// SPDX-License-Identifier: MPL-2.0
//! The unsafe half of `AlignedMemory`: the `GstAlignedMemory` struct and its typed wrapper,
//! where its bytes live, guard mode, a block's life (init, alloc, share, release), the memory
//! vfuncs and the class's `alloc`/`free`. Everything else of the allocator is safe code.
//!
//! Layout of a block (see `layout.rs`): one system allocation aligned to the effective
//! alignment, `shift` unused bytes, then the region of `maxsize` bytes that GStreamer sees:
//! prefix, payload (aligned), padding, tail slack. Every share of a block points at the same
//! region base and differs only in `offset`/`size`; only a root (`parent == NULL`) owns the
//! backing storage.
//!
//! Rules every function here follows: no panics (an `extern "C"` function that panics aborts
//! the host process), every size computation checked, NULL/FALSE plus a log line on failure.
//!
//! Files depend on each other in one direction: `registry`, `backtrace`, `stack` ← `report` ←
//! `chain` ← `fault` ← `regions` ← `protect` ←
//! `storage` ← `block` ← `guard` ← `thread` ← `lifecycle` ← `vfuncs`, `typed`, `class`.

mod backtrace;
mod block;
mod chain;
mod class;
mod fault;
mod guard;
mod lifecycle;
mod protect;
mod recover;
mod regions;
mod registry;
mod report;
mod stack;
mod storage;
mod thread;
mod typed;
mod vfuncs;

pub use block::{ALLOCATOR_TYPE_NAME, AlignedMemory, AlignedMemoryRef, GstAlignedMemory};
pub use guard::{
    CANARY, CANARY_BYTE, FILL_BYTE, GuardViolation, POISON_BYTE, check_memory_guard, guard_enabled,
    set_guard_enabled,
};
pub use lifecycle::{alloc, install_class_alloc, set_immortal, wrap};
pub use protect::{set_protect_mode, unprotected};
pub use registry::{ProtectMode, protect_mode};
pub use report::{
    Kind as ProtectViolation, MAX_RECORDS as MAX_PROTECT_RECORDS, REPORTS_PER_INSTRUCTION,
    Record as ProtectRecord, records as protect_records, set_reports_per_instruction,
    unwritten_reports, violations as protect_violations,
};
pub use storage::{HUGE_PAGE, MMAP_THRESHOLD};
pub use thread::cache;
pub use vfuncs::{charge_maps, install_vfuncs};
