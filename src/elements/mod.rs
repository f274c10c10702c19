// SPDX-License-Identifier: MPL-2.0
//! memkit's elements, and what they share.

use gst::glib;
use gst::prelude::*;

pub mod memalign;
pub mod memcheck;
pub mod memmerge;
pub mod memslice;
pub mod memsrc;
pub mod util;

/// Registers every memkit element.
pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    memalign::register(plugin)?;
    memslice::register(plugin)?;
    memmerge::register(plugin)?;
    memcheck::register(plugin)?;
    memsrc::register(plugin)?;
    Ok(())
}

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
