// SPDX-License-Identifier: MPL-2.0
use gst::glib;
use gst::prelude::*;

mod imp;

glib::wrapper! {
    /// Checks every memory of every buffer: alignment, memory type, zeroed prefix/padding, mappability.
    pub struct MemCheck(ObjectSubclass<imp::MemCheck>) @extends gst_base::BaseTransform, gst::Element, gst::Object;
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(
        Some(plugin),
        "memcheck",
        gst::Rank::NONE,
        MemCheck::static_type(),
    )
}
