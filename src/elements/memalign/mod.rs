// SPDX-License-Identifier: MPL-2.0
use gst::glib;
use gst::prelude::*;

mod imp;

glib::wrapper! {
    /// Guarantees aligned, zero-padded payloads: proposes `AlignedMemory` upstream and copies
    /// only buffers that do not meet the requirement.
    pub struct MemAlign(ObjectSubclass<imp::MemAlign>) @extends gst_base::BaseTransform, gst::Element, gst::Object;
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(
        Some(plugin),
        "memalign",
        gst::Rank::NONE,
        MemAlign::static_type(),
    )
}
