// SPDX-License-Identifier: MPL-2.0
//! memkit: a GStreamer plugin around `AlignedMemory`, an allocator with guarantees the system
//! allocator does not give (aligned payloads, exact zeroing, zero-copy shares and spans).
#![deny(unsafe_code)]

pub use gst;

pub mod allocator;
mod attribution;
pub mod elements;
mod tracer;
mod transport;

/// Descriptors that peers of `memfdsink`/`memfdsrc` sent and that are still being closed (the
/// transport closes them on closer threads, off every path another thread waits on): for
/// tests that count a process's descriptors.
pub fn peer_descriptors_closing() -> usize {
    transport::closer::pending()
}

fn plugin_init(plugin: &gst::Plugin) -> Result<(), gst::glib::BoolError> {
    allocator::register(plugin)?;
    elements::register(plugin)?;
    tracer::register(plugin)?;
    Ok(())
}

gst::plugin_define!(
    memkit,
    env!("CARGO_PKG_DESCRIPTION"),
    plugin_init,
    concat!(env!("CARGO_PKG_VERSION"), "-", env!("COMMIT_ID")),
    "MPL",
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_REPOSITORY"),
    env!("BUILD_REL_DATE")
);
