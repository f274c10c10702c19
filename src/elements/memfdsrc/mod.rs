// SPDX-License-Identifier: MPL-2.0
use gst::glib;
use gst::prelude::*;

mod check;
mod imp;
pub mod video;

glib::wrapper! {
    /// Receives a stream from a `memfdsink` in another process, memories as fd memory.
    pub struct MemfdSrc(ObjectSubclass<imp::MemfdSrc>) @extends gst_base::PushSrc, gst_base::BaseSrc, gst::Element, gst::Object;
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(
        Some(plugin),
        "memfdsrc",
        gst::Rank::NONE,
        MemfdSrc::static_type(),
    )
}
