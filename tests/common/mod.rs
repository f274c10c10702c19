// SPDX-License-Identifier: MPL-2.0
//! What the integration tests share: GStreamer and the plugin initialised once, and params.
#![allow(dead_code)]

use std::sync::Once;

/// Initialises GStreamer and registers the memkit plugin (statically), once per process.
pub fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        gst::init().unwrap();
        gstmemkit::plugin_register_static().unwrap();
    });
}

/// `gst::AllocationParams` in the order of the C struct.
pub fn params(
    flags: gst::MemoryFlags,
    align: usize,
    prefix: usize,
    padding: usize,
) -> gst::AllocationParams {
    gst::AllocationParams::new(flags, align, prefix, padding)
}

/// The text of the first message of `kind` (an ERROR or a WARNING) on `bus`.
pub fn message_text(bus: &gst::Bus, kind: gst::MessageType) -> String {
    let msg = bus
        .pop_filtered(&[kind])
        .unwrap_or_else(|| panic!("no {kind:?} message on the bus"));
    match msg.view() {
        gst::MessageView::Error(e) => e.error().to_string(),
        gst::MessageView::Warning(w) => w.error().to_string(),
        _ => unreachable!("only ERROR and WARNING messages have a text"),
    }
}
