// SPDX-License-Identifier: MPL-2.0
use gst::glib;
use gst::prelude::*;

mod imp;

/// The byte pattern `memsrc` produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstMemSrcPattern")]
pub enum MemSrcPattern {
    #[default]
    #[enum_value(name = "Zero: every byte is 0", nick = "zero")]
    Zero = 0,
    #[enum_value(
        name = "Counter: each byte is its stream offset modulo 256",
        nick = "counter"
    )]
    Counter = 1,
    #[enum_value(name = "Random: a reproducible stream from the seed", nick = "random")]
    Random = 2,
    #[enum_value(
        name = "None: the payload is not written (what the allocator gave: zeros when fresh, \
                an earlier buffer's bytes when recycled), like a camera whose hardware writes it",
        nick = "none"
    )]
    None = 3,
}

glib::wrapper! {
    /// Produces buffers of `blocksize` bytes from a chosen allocator, with a reproducible pattern.
    pub struct MemSrc(ObjectSubclass<imp::MemSrc>) @extends gst_base::PushSrc, gst_base::BaseSrc, gst::Element, gst::Object;
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    MemSrcPattern::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    gst::Element::register(
        Some(plugin),
        "memsrc",
        gst::Rank::NONE,
        MemSrc::static_type(),
    )
}
