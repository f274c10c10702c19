// SPDX-License-Identifier: MPL-2.0
//! The `AlignedMemory` GObject subclass of `GstAllocator`. The vfuncs and `alloc`/`free`
//! live in `memory/` (`vfuncs.rs`, `class.rs`); this file holds no FFI code.

use std::sync::LazyLock;

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;

use super::memory::{self, ALLOCATOR_TYPE_NAME};
use crate::allocator::aligned::stats;
use crate::allocator::debug::ALIGNED as CAT;
use crate::allocator::shared::{bound_from, cache_properties};

/// The `protect` property's values (see `memory::ProtectMode`).
#[derive(Debug, Eq, PartialEq, Clone, Copy, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "MemkitProtectMode")]
pub enum Protect {
    #[enum_value(name = "Off: blocks are allocated as usual", nick = "off")]
    Off = 0,
    #[enum_value(
        name = "Abort: report a violation, then die of the signal",
        nick = "abort"
    )]
    Abort = 1,
    #[enum_value(name = "Continue: report, count, and go on", nick = "continue")]
    Continue = 2,
}

impl From<Protect> for memory::ProtectMode {
    fn from(p: Protect) -> Self {
        match p {
            Protect::Off => memory::ProtectMode::Off,
            Protect::Abort => memory::ProtectMode::Abort,
            Protect::Continue => memory::ProtectMode::Continue,
        }
    }
}

impl From<memory::ProtectMode> for Protect {
    fn from(m: memory::ProtectMode) -> Self {
        match m {
            memory::ProtectMode::Off => Protect::Off,
            memory::ProtectMode::Abort => Protect::Abort,
            memory::ProtectMode::Continue => Protect::Continue,
        }
    }
}

#[derive(Default)]
pub struct AlignedAllocator;

#[glib::object_subclass]
impl ObjectSubclass for AlignedAllocator {
    const NAME: &'static str = ALLOCATOR_TYPE_NAME;
    type Type = super::AlignedAllocator;
    type ParentType = gst::Allocator;

    fn class_init(klass: &mut Self::Class) {
        memory::install_class_alloc(klass.upcast_ref_mut());
    }
}

impl ObjectImpl for AlignedAllocator {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            let [max, cached] = cache_properties(
                "Bound of the recycling cache of freed blocks, shared by every AlignedMemory \
                 allocator of the process, separate from MemfdMemory's (0 disables the cache; \
                 the initial value comes from MEMKIT_MAX_CACHED_BYTES)",
                "Bytes held by the recycling cache (shared pool and this thread's lists)",
            );
            vec![
                max,
                cached,
                glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
                    .nick("Statistics")
                    .blurb(
                        "memkit-allocator-stats: blocks-live, bytes-live, peak-bytes, \
                         cached-bytes, allocations, frees, cache-hits, cache-misses, shares, \
                         copies, bytes-copied, span-hits, maps (counted when their memory is \
                         freed), wraps, guard-violations (all guint64, process-wide; reset with \
                         the reset-stats action signal)",
                    )
                    .read_only()
                    .build(),
                glib::ParamSpecBoolean::builder("collect-stats")
                    .nick("Collect statistics")
                    .blurb(
                        "Count allocations, frees, shares, copies, maps (MEMKIT_STATS=0 starts \
                         with it off)",
                    )
                    .default_value(true)
                    .build(),
                glib::ParamSpecBoolean::builder("guard")
                    .nick("Guard mode")
                    .blurb(
                        "Give new blocks canaries before the region and after maxsize, fill \
                         prefix and padding, poison freed blocks, and check them on write-unmap \
                         and free (MEMKIT_GUARD=1 starts with it on, MEMKIT_GUARD=abort also \
                         aborts on a violation)",
                    )
                    .default_value(false)
                    .build(),
                glib::ParamSpecEnum::builder_with_default("protect", Protect::Off)
                    .nick("Protect mode")
                    .blurb(
                        "Give new blocks their own pages between guard pages, protected as their \
                         mappings allow, and report any other access at the faulting \
                         instruction (MEMKIT_GUARD=protect or protect-continue starts with it on)",
                    )
                    .build(),
            ]
        });
        PROPERTIES.as_ref()
    }

    fn signals() -> &'static [glib::subclass::Signal] {
        static SIGNALS: LazyLock<Vec<glib::subclass::Signal>> = LazyLock::new(|| {
            vec![
                glib::subclass::Signal::builder("reset-stats")
                    .action()
                    .class_handler(|_| {
                        stats::reset();
                        None
                    })
                    .build(),
            ]
        });
        SIGNALS.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        match pspec.name() {
            "collect-stats" => {
                stats::set_enabled(value.get().expect("type checked upstream"));
            }
            "guard" => {
                let on = value.get().expect("type checked upstream");
                gst::info!(
                    CAT,
                    imp = self,
                    "guard mode {}",
                    if on { "on" } else { "off" }
                );
                memory::set_guard_enabled(on);
            }
            "protect" => {
                let mode = value.get::<Protect>().expect("type checked upstream");
                gst::info!(CAT, imp = self, "protect mode {:?}", mode);
                memory::set_protect_mode(mode.into());
            }
            "max-cached-bytes" => {
                let max = bound_from(value);
                gst::debug!(CAT, imp = self, "max-cached-bytes set to {}", max);
                memory::cache().set_max_bytes(max);
            }
            _ => unimplemented!(),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        match pspec.name() {
            "max-cached-bytes" => (memory::cache().max_bytes() as u64).to_value(),
            "cached-bytes" => (memory::cache().cached_bytes() as u64).to_value(),
            "stats" => stats::snapshot(memory::cache().cached_bytes())
                .to_structure()
                .to_value(),
            "collect-stats" => stats::enabled().to_value(),
            "guard" => memory::guard_enabled().to_value(),
            "protect" => Protect::from(memory::protect_mode()).to_value(),
            _ => unimplemented!(),
        }
    }

    fn constructed(&self) {
        self.parent_constructed();
        memory::install_vfuncs(self.obj().upcast_ref());
        gst::debug!(CAT, imp = self, "created");
    }
}

impl GstObjectImpl for AlignedAllocator {}
