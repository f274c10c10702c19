// SPDX-License-Identifier: MPL-2.0
//! The `memkittracer` tracer: audits the memory of any pipeline without changing it.
//!
//! `GST_TRACERS="memkittracer(guard=true,report=/tmp/report.json)" gst-launch-1.0 ...` makes
//! `AlignedMemory` the process-wide default allocator, records every live block, checks the
//! guards of every buffer at every pad push (naming the element that pushed a damaged one),
//! and prints a report when a pipeline stops and when the process ends. With
//! `fail-on-violation=true` a process in which any violation was counted exits with
//! status 66, as a sanitizer does.

use gst::glib;
use gst::prelude::*;

#[allow(unsafe_code)]
mod hooks;
mod imp;
pub mod report;
mod timeline;

glib::wrapper! {
    /// The `memkittracer` tracer (GType `MemkitTracer`).
    pub struct MemkitTracer(ObjectSubclass<imp::MemkitTracer>) @extends gst::Tracer, gst::Object;
}

/// Registers the tracer.
pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Tracer::register(Some(plugin), "memkittracer", MemkitTracer::static_type())
}
