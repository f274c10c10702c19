// SPDX-License-Identifier: MPL-2.0
use gst::glib;
use gst::prelude::*;

mod imp;

glib::wrapper! {
    /// Cuts buffers into pieces of chunk-size bytes without copying (shares of the input memory).
    pub struct MemSlice(ObjectSubclass<imp::MemSlice>) @extends gst_base::BaseTransform, gst::Element, gst::Object;
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(
        Some(plugin),
        "memslice",
        gst::Rank::NONE,
        MemSlice::static_type(),
    )
}
