// SPDX-License-Identifier: MPL-2.0
use gst::glib;
use gst::prelude::*;

mod describe;
mod imp;

glib::wrapper! {
    /// Sends a stream to other processes over a Unix socket, each memory as a descriptor.
    pub struct MemfdSink(ObjectSubclass<imp::MemfdSink>) @extends gst_base::BaseSink, gst::Element, gst::Object;
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(
        Some(plugin),
        "memfdsink",
        gst::Rank::NONE,
        MemfdSink::static_type(),
    )
}
