// SPDX-License-Identifier: MPL-2.0
//! The allocators' debug categories (`GST_DEBUG=alignedmemory:5,memfdmemory:5`).

use std::sync::LazyLock;

/// `AlignedMemory`'s category, also used by what both allocators share.
pub static ALIGNED: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "alignedmemory",
        gst::DebugColorFlags::empty(),
        Some("memkit AlignedMemory allocator"),
    )
});

/// `MemfdMemory`'s category.
pub static MEMFD: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "memfdmemory",
        gst::DebugColorFlags::empty(),
        Some("memkit MemfdMemory allocator"),
    )
});
