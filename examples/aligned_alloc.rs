// SPDX-License-Identifier: MPL-2.0
//! The README's Rust example, run by the test suite (`meson test` runs it as `rust-example`).

use gst::prelude::*;
use gstmemkit::allocator::{AlignedMemory, aligned_allocator};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    gst::init()?;
    gstmemkit::plugin_register_static()?; // registers "AlignedMemory"
    let allocator = aligned_allocator();

    let params = gst::AllocationParams::new(gst::MemoryFlags::ZERO_PADDED, 4095, 0, 64);
    let mem: AlignedMemory = allocator.alloc_aligned(1 << 20, Some(&params))?; // Result<_, AllocError>
    assert_eq!(mem.payload_addr() % 4096, 0);

    let share = mem.share(0..4096)?; // Result: no panic on empty or bad ranges
    let copy = share.copy_range(..)?; // writable, same alignment
    assert!(copy.is_writable() && copy.align() == 4095);
    assert!(mem.share(0..(2 << 20)).is_err());
    let typed = gst::Memory::with_size(10).downcast_memory::<AlignedMemory>();
    assert!(typed.is_err()); // SystemMemory is not ours

    // Wrap memory you own: dropped exactly once, when the last share of it is gone.
    let wrapped = allocator.wrap(vec![7u8; 4096], 0, 4096)?; // read-only
    let mut writable = allocator.wrap_writable([0u8; 64], 0, 64)?;
    writable.get_mut().unwrap().map_writable()?.as_mut_slice()[0] = 1;
    assert_eq!(wrapped.map_readable()?.as_slice()[0], 7);

    allocator.set_default(); // process-wide default
    assert!(gst::Memory::with_size(100).is_memory_type::<AlignedMemory>());
    println!("AlignedMemory: all README examples behave as documented");
    Ok(())
}
