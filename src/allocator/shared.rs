// SPDX-License-Identifier: MPL-2.0
//! What both allocators' safe code shares: the check of an allocator's GType by name, and the
//! recycling bound (its default, environment variable and properties).

use std::sync::OnceLock;

use gst::glib;
use gst::prelude::*;

/// Default bound of each allocator's recycling cache.
pub const DEFAULT_MAX_CACHED_BYTES: usize = 64 << 20;
/// Environment variable that sets the initial `max-cached-bytes` of both allocators (0
/// disables recycling).
pub const ENV_MAX_CACHED_BYTES: &str = "MEMKIT_MAX_CACHED_BYTES";

/// The initial bound of a recycling cache: `MEMKIT_MAX_CACHED_BYTES`, else the default.
pub fn initial_max() -> usize {
    std::env::var(ENV_MAX_CACHED_BYTES)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(DEFAULT_MAX_CACHED_BYTES)
}

/// Whether `allocator` is an instance of the GType named `name` (or a subclass): a check of
/// its GType, not of the `mem_type` string, which any allocator could claim. The type is
/// looked up once it is registered and kept in `cache`.
pub fn allocator_is(
    allocator: &gst::Allocator,
    cache: &'static OnceLock<glib::Type>,
    name: &str,
) -> bool {
    let t = match cache.get() {
        Some(t) => *t,
        None => match glib::Type::from_name(name) {
            Some(t) => *cache.get_or_init(|| t),
            None => return false,
        },
    };
    allocator.type_().is_a(t)
}

/// `max-cached-bytes` (read-write, default 64 MiB) and `cached-bytes` (read-only), with the
/// allocator's own blurbs.
pub fn cache_properties(max_blurb: &str, cached_blurb: &str) -> [glib::ParamSpec; 2] {
    [
        glib::ParamSpecUInt64::builder("max-cached-bytes")
            .nick("Maximum cached bytes")
            .blurb(max_blurb)
            .default_value(DEFAULT_MAX_CACHED_BYTES as u64)
            .build(),
        glib::ParamSpecUInt64::builder("cached-bytes")
            .nick("Cached bytes")
            .blurb(cached_blurb)
            .read_only()
            .build(),
    ]
}

/// A `max-cached-bytes` value as a bound in bytes (saturating on 32-bit systems).
pub fn bound_from(value: &glib::Value) -> usize {
    usize::try_from(value.get::<u64>().expect("type checked upstream")).unwrap_or(usize::MAX)
}
