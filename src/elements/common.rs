// SPDX-License-Identifier: MPL-2.0
//! What the elements share that uses GStreamer: statistics messages, allocation queries, pad
//! templates, common property specs, sharing of regions.

use gst::glib;
use gst::prelude::*;

use super::memory;
use super::util;

/// Posts `stats` as an element message from `element` (on EOS, so that `gst-launch-1.0 -m` and
/// applications can read the counters).
pub(crate) fn post_stats<E: IsA<gst::Element> + IsA<gst::Object>>(
    element: &E,
    stats: gst::Structure,
) {
    let msg = gst::message::Element::builder(stats).src(element).build();
    // Without a bus (not in a pipeline) there is nobody to tell: ignore.
    let _ = element.post_message(msg);
}

/// Moves an allocator with `params` to the front of an ALLOCATION query's allocation params:
/// base classes use only the first.
pub(crate) fn propose_allocator_first(
    query: &mut gst::query::Allocation,
    allocator: &gst::Allocator,
    params: &gst::AllocationParams,
) {
    let others: Vec<_> = query
        .allocation_params()
        .filter(|(a, _)| a.as_ref() != Some(allocator))
        .collect();
    while query.allocation_params().len() > 0 {
        query.remove_nth_allocation_param(0);
    }
    query.add_allocation_param(Some(allocator), *params);
    for (a, p) in others {
        query.add_allocation_param(a.as_ref(), p);
    }
}

/// A short description of a buffer for error messages: its position in the stream.
pub(crate) fn describe_buffer(index: u64, buf: &gst::BufferRef) -> String {
    format!(
        "buffer #{index} (pts {}, offset {}, {} bytes, {} memories)",
        buf.pts().display(),
        if buf.offset() == u64::MAX {
            "none".to_string()
        } else {
            buf.offset().to_string()
        },
        buf.size(),
        buf.n_memory()
    )
}

/// An always-present pad template `name` with any caps.
pub(crate) fn any_caps_template(name: &str, direction: gst::PadDirection) -> gst::PadTemplate {
    gst::PadTemplate::new(
        name,
        direction,
        gst::PadPresence::Always,
        &gst::Caps::new_any(),
    )
    .expect("a static template is valid")
}

/// The src and sink templates of an element that accepts any caps.
pub(crate) fn any_caps_templates() -> Vec<gst::PadTemplate> {
    vec![
        any_caps_template("src", gst::PadDirection::Src),
        any_caps_template("sink", gst::PadDirection::Sink),
    ]
}

/// The read-only `stats` property every memkit element has.
pub(crate) fn stats_pspec(blurb: &'static str) -> glib::ParamSpec {
    glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
        .nick("Statistics")
        .blurb(blurb)
        .read_only()
        .build()
}

/// An `alignment` property: bytes, a power of two from 1 to 2 MiB.
pub(crate) fn alignment_pspec(blurb: &'static str, default: u32, playing: bool) -> glib::ParamSpec {
    let builder = glib::ParamSpecUInt::builder("alignment")
        .nick("Alignment")
        .blurb(blurb)
        .minimum(1)
        .maximum(util::MAX_ELEMENT_ALIGN)
        .default_value(default);
    if playing {
        builder.mutable_playing().build()
    } else {
        builder.mutable_ready().build()
    }
}

/// Property values an element refused; logged at once, and posted as a WARNING on the bus
/// when the element starts (a property is usually set before the element has a bus).
#[derive(Default)]
pub(crate) struct Refusals(std::sync::Mutex<Option<String>>);

impl Refusals {
    /// Sets `slot` to `value` if it is a valid alignment, else keeps it and records why.
    pub(crate) fn set_alignment(
        &self,
        cat: gst::DebugCategory,
        obj: &impl IsA<gst::Object>,
        slot: &mut u32,
        value: u32,
    ) {
        match util::check_alignment(value) {
            Ok(v) => *slot = v,
            Err(why) => {
                let msg = format!("{why}: keeping alignment {slot}");
                gst::warning!(cat, obj = obj, "{msg}");
                *self.0.lock().unwrap() = Some(msg);
            }
        }
    }

    /// Posts the last refusal, if any, as a WARNING message from `element`.
    pub(crate) fn post<E: IsA<gst::Element> + IsA<gst::Object>>(&self, element: &E) {
        if let Some(msg) = self.0.lock().unwrap().take() {
            gst::element_warning!(element, gst::LibraryError::Settings, ("{}", msg));
        }
    }
}

/// Bytes `range` of `buf` as a new buffer: shares of its memories, or, when one of those
/// memories already has [`MAX_LIVE_SHARES`](memory::MAX_LIVE_SHARES) holders, a copy (core counts a
/// memory's shares in 16 bits; past 65535 its lock accounting breaks). The flag says whether
/// it copied.
pub(crate) fn share_region(
    buf: &gst::Buffer,
    range: std::ops::Range<usize>,
) -> Result<(gst::Buffer, bool), glib::BoolError> {
    let crowded = buf
        .iter_memories()
        .any(|m| memory::live_shares(m) >= memory::MAX_LIVE_SHARES);
    let mut flags = gst::BufferCopyFlags::MEMORY;
    if crowded {
        flags |= gst::BufferCopyFlags::DEEP;
    }
    Ok((buf.copy_region(flags, range)?, crowded))
}

/// Copies the flags, timestamps and every meta of `src` into `dst`, a buffer whose bytes are
/// a byte-for-byte copy of `src`'s at the same offsets (in one memory or several). Core's
/// `gst_buffer_copy_into` without `MEMORY` leaves out the metas tagged `memory`
/// (`GstVideoMeta` above all); their offsets and strides hold in such a copy, so they are
/// copied too, each with its own transform.
pub(crate) fn copy_metadata(
    src: &gst::BufferRef,
    dst: &mut gst::BufferRef,
) -> Result<(), glib::BoolError> {
    let flags =
        gst::BufferCopyFlags::FLAGS | gst::BufferCopyFlags::TIMESTAMPS | gst::BufferCopyFlags::META;
    src.copy_into(dst, flags, ..)?;
    let whole = gst::meta::MetaTransformCopy::new(..);
    for meta in src.iter_meta::<gst::Meta>() {
        if meta.has_tag::<gst::meta::tags::Memory>() {
            meta.transform(dst, &whole)?;
        }
    }
    Ok(())
}

/// The buffer flags that cross between processes: core's and the video ones, never the
/// mini-object bits below them (`LOCKABLE`, `LOCK_READONLY`, ...), which would change how
/// the receiving process's GStreamer locks the buffer, nor bits nobody defines.
pub(crate) fn crossing_flags(bits: u32) -> u32 {
    bits & (gst::BufferFlags::all().bits() | gst_video::VideoBufferFlags::all().bits())
}

/// The name of `allocator`'s memory type, for stats and messages: `(unnamed)` for an
/// allocator that set none (shmsink's), which `gst::Allocator::memory_type` cannot read.
pub(crate) fn allocator_name(allocator: &gst::Allocator) -> String {
    memory::memory_type_of(allocator).unwrap_or_else(|| "(unnamed)".to_owned())
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_buffer_and_video_flags_cross() {
        let mini_object = 0xf; // LOCKABLE, LOCK_READONLY, MAY_BE_LEAKED, and the last one
        let video = gst_video::VideoBufferFlags::INTERLACED.bits()
            | gst_video::VideoBufferFlags::TFF.bits();
        let core = gst::BufferFlags::DISCONT.bits() | gst::BufferFlags::DELTA_UNIT.bits();
        assert_eq!(
            super::crossing_flags(mini_object | video | core),
            video | core
        );
        assert_eq!(super::crossing_flags(u32::MAX) & mini_object, 0);
        assert_eq!(super::crossing_flags(1 << 31), 0, "a bit nobody defines");
    }
}
