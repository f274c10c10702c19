// SPDX-License-Identifier: MPL-2.0
//! The `AlignedMemory` GObject subclass of `GstAllocator`. The vfuncs and `alloc`/`free`
//! live in `memory.rs`; this file holds no `unsafe`.

use std::sync::LazyLock;

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;

pub(crate) static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "alignedmemory",
        gst::DebugColorFlags::empty(),
        Some("memkit AlignedMemory allocator"),
    )
});

#[derive(Default)]
pub struct AlignedAllocator;

#[glib::object_subclass]
impl ObjectSubclass for AlignedAllocator {
    const NAME: &'static str = "MemkitAlignedAllocator";
    type Type = super::AlignedAllocator;
    type ParentType = gst::Allocator;
}

impl ObjectImpl for AlignedAllocator {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            vec![
                glib::ParamSpecUInt64::builder("max-cached-bytes")
                    .nick("Maximum cached bytes")
                    .blurb(
                        "Bound of the recycling cache of freed blocks, shared by every \
                         AlignedMemory allocator of the process (0 disables the cache; the \
                         initial value comes from MEMKIT_MAX_CACHED_BYTES)",
                    )
                    .default_value(super::DEFAULT_MAX_CACHED_BYTES as u64)
                    .build(),
                glib::ParamSpecUInt64::builder("cached-bytes")
                    .nick("Cached bytes")
                    .blurb(
                        "Bytes held by the recycling cache (shared pool and this thread's lists)",
                    )
                    .read_only()
                    .build(),
            ]
        });
        PROPERTIES.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        match pspec.name() {
            "max-cached-bytes" => {
                let max = value.get::<u64>().expect("type checked upstream");
                let max = usize::try_from(max).unwrap_or(usize::MAX);
                gst::debug!(CAT, imp = self, "max-cached-bytes set to {}", max);
                super::set_max_cached_bytes(max);
            }
            _ => unimplemented!(),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        match pspec.name() {
            "max-cached-bytes" => (super::max_cached_bytes() as u64).to_value(),
            "cached-bytes" => (super::cached_bytes() as u64).to_value(),
            _ => unimplemented!(),
        }
    }

    fn constructed(&self) {
        self.parent_constructed();
        super::memory::install_vfuncs(&self.obj());
        gst::debug!(CAT, imp = self, "created");
    }

    fn dispose(&self) {
        // Cached blocks hold no reference on any allocator, so this runs once the last memory
        // of this instance is gone; drain the cache with it.
        super::trim_cache();
        gst::debug!(CAT, imp = self, "disposed, cache drained");
    }
}

impl GstObjectImpl for AlignedAllocator {}
