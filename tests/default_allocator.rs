// SPDX-License-Identifier: MPL-2.0
//! `AlignedMemory` as the process-wide default allocator (its own test binary, because
//! `gst_allocator_set_default` changes the whole process).

use gst::prelude::*;
use gstmemkit::allocator::{ALIGNED_MEMORY, AlignedMemory, aligned_allocator};

#[test]
fn set_default_makes_core_allocations_aligned_memory() {
    gst::init().unwrap();
    gstmemkit::plugin_register_static().unwrap();

    let before = gst::Memory::with_size(100);
    assert!(before.is_type("SystemMemory"));

    aligned_allocator().set_default();
    assert_eq!(
        gst::Allocator::find(None).unwrap().memory_type(),
        ALIGNED_MEMORY
    );

    let mem = gst::Memory::with_size(100);
    let mem = mem
        .downcast_memory::<AlignedMemory>()
        .expect("default is AlignedMemory");
    assert_eq!(mem.maxsize(), 128);
    assert_eq!(mem.payload_addr() & 63, 0);

    let buffer = gst::Buffer::with_size(1000).unwrap();
    assert!(buffer.peek_memory(0).is_memory_type::<AlignedMemory>());

    // Merging non-contiguous memories copies into the default allocator: ours.
    let mut buffer = gst::Buffer::new();
    {
        let b = buffer.get_mut().unwrap();
        b.append_memory(gst::Memory::from_slice(vec![1u8; 10]));
        b.append_memory(gst::Memory::from_slice(vec![2u8; 10]));
    }
    let merged = buffer.into_mapped_buffer_readable().unwrap();
    assert_eq!(merged.as_slice()[9..11], [1, 2]);
    assert_eq!(merged.as_slice().as_ptr() as usize & 63, 0);

    gst::Allocator::find(Some("SystemMemory"))
        .unwrap()
        .set_default();
    assert!(gst::Memory::with_size(10).is_type("SystemMemory"));
}
