// SPDX-License-Identifier: MPL-2.0
//! memkit's elements: one folder each (`mod.rs` with the wrapper and `register()`, `imp.rs` with
//! the subclass), `common` (what they share that uses GStreamer), `util` (pure logic) and
//! `memory` (helpers for memory of any allocator, the elements' unsafe half).

use gst::glib;

mod common;
mod memalign;
mod memcheck;
mod memfdsink;
mod memfdsrc;
mod memmerge;
#[allow(unsafe_code)]
pub mod memory;
mod memslice;
mod memsrc;
pub(crate) mod util;

/// Registers every memkit element.
pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    memalign::register(plugin)?;
    memslice::register(plugin)?;
    memmerge::register(plugin)?;
    memcheck::register(plugin)?;
    memsrc::register(plugin)?;
    memfdsink::register(plugin)?;
    memfdsrc::register(plugin)?;
    Ok(())
}
