// SPDX-License-Identifier: MPL-2.0
use gst::glib;
use gst::prelude::*;

mod imp;

glib::wrapper! {
    /// Coalesces buffers into buffers of target-size bytes, zero-copy when the pieces are contiguous shares of one parent.
    pub struct MemMerge(ObjectSubclass<imp::MemMerge>) @extends gst_base::BaseTransform, gst::Element, gst::Object;
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(
        Some(plugin),
        "memmerge",
        gst::Rank::NONE,
        MemMerge::static_type(),
    )
}
