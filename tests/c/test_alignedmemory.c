/* SPDX-License-Identifier: MPL-2.0
 *
 * gst-check suite for memkit's AlignedMemory allocator, loaded through GST_PLUGIN_PATH and
 * made the default allocator: GstMemory and GstBuffer behaviour on top of it, as C code sees it.
 */

#include <gst/check/gstcheck.h>
#include <gst/allocators/gstfdmemory.h>
#include <stdio.h>
#include <string.h>

#define MEMKIT_TYPE "AlignedMemory"

static GstAllocator *aligned;

static void
setup (void)
{
  GstPlugin *plugin = gst_plugin_load_by_name ("memkit");

  fail_unless (plugin != NULL, "memkit not found: is GST_PLUGIN_PATH set?");
  gst_object_unref (plugin);

  aligned = gst_allocator_find (MEMKIT_TYPE);
  fail_unless (aligned != NULL);
  /* set_default takes ownership of a reference */
  gst_allocator_set_default (gst_object_ref (aligned));
}

static void
teardown (void)
{
  gst_allocator_set_default (gst_allocator_find (GST_ALLOCATOR_SYSMEM));
  gst_object_unref (aligned);
  aligned = NULL;
}

static guint8 *
map_read (GstMemory * mem, GstMapInfo * info)
{
  fail_unless (gst_memory_map (mem, info, GST_MAP_READ));
  return info->data;
}

static void
fill (GstMemory * mem, guint8 seed)
{
  GstMapInfo info;
  gsize i;

  fail_unless (gst_memory_map (mem, &info, GST_MAP_WRITE));
  for (i = 0; i < info.size; i++)
    info.data[i] = (guint8) (seed + i);
  gst_memory_unmap (mem, &info);
}

GST_START_TEST (test_registered_and_default)
{
  GstMemory *mem;
  GstAllocator *def = gst_allocator_find (NULL);

  fail_unless_equals_string (aligned->mem_type, MEMKIT_TYPE);
  fail_unless (def == aligned);
  gst_object_unref (def);

  mem = gst_allocator_alloc (NULL, 100, NULL);
  fail_unless (mem != NULL);
  fail_unless (gst_memory_is_type (mem, MEMKIT_TYPE));
  fail_unless (mem->allocator == aligned);
  fail_unless_equals_int (mem->maxsize, 128);
  fail_unless_equals_int (mem->align, 63);
  gst_memory_unref (mem);

  fail_unless (gst_allocator_find ("NoSuchAllocator") == NULL);
}

GST_END_TEST;

GST_START_TEST (test_payload_aligned_for_any_prefix)
{
  gsize prefix, n;
  gsize masks[] = { 0, 63, 127, 4095 };

  for (n = 0; n < G_N_ELEMENTS (masks); n++) {
    for (prefix = 0; prefix < 200; prefix++) {
      GstAllocationParams params;
      GstMapInfo info;
      GstMemory *mem;

      gst_allocation_params_init (&params);
      params.align = masks[n];
      params.prefix = prefix;
      mem = gst_allocator_alloc (NULL, 10, &params);
      fail_unless (mem != NULL);
      fail_unless_equals_int (mem->offset, prefix);
      map_read (mem, &info);
      fail_unless (((guintptr) info.data & (masks[n] | 63)) == 0);
      gst_memory_unmap (mem, &info);
      gst_memory_unref (mem);
    }
  }
}

GST_END_TEST;

GST_START_TEST (test_zero_prefix_and_padding)
{
  GstAllocationParams params;
  GstMapInfo info;
  GstMemory *mem;
  gsize i;

  gst_allocation_params_init (&params);
  params.prefix = 10;
  params.padding = 5;
  params.flags = GST_MEMORY_FLAG_ZERO_PREFIXED | GST_MEMORY_FLAG_ZERO_PADDED;
  mem = gst_allocator_alloc (NULL, 100, &params);
  fail_unless_equals_int (mem->maxsize, 128);
  fill (mem, 1);
  /* the whole region: move the offset to 0 and the size to maxsize */
  gst_memory_resize (mem, -10, 128);
  map_read (mem, &info);
  for (i = 0; i < 10; i++)
    fail_unless_equals_int (info.data[i], 0);
  fail_unless_equals_int (info.data[10], 1);
  for (i = 110; i < 128; i++)
    fail_unless_equals_int (info.data[i], 0);
  gst_memory_unmap (mem, &info);
  gst_memory_unref (mem);
}

GST_END_TEST;

GST_START_TEST (test_size_zero_maps_non_null)
{
  GstMapInfo info;
  GstMemory *mem = gst_allocator_alloc (NULL, 0, NULL);

  fail_unless (mem != NULL);
  fail_unless (gst_memory_map (mem, &info, GST_MAP_READWRITE));
  fail_unless (info.data != NULL);
  fail_unless_equals_int (info.size, 0);
  gst_memory_unmap (mem, &info);
  gst_memory_unref (mem);
}

GST_END_TEST;

GST_START_TEST (test_buffer_new_allocate_uses_aligned_memory)
{
  GstBuffer *buf = gst_buffer_new_allocate (NULL, 1000, NULL);
  GstMemory *mem = gst_buffer_peek_memory (buf, 0);
  GstMapInfo info;

  fail_unless (gst_memory_is_type (mem, MEMKIT_TYPE));
  fail_unless (gst_buffer_map (buf, &info, GST_MAP_WRITE));
  fail_unless (((guintptr) info.data & 63) == 0);
  memset (info.data, 0x42, info.size);
  gst_buffer_unmap (buf, &info);
  gst_buffer_unref (buf);
}

GST_END_TEST;

GST_START_TEST (test_buffer_map_of_contiguous_shares_is_zero_copy)
{
  GstAllocationParams params;
  GstMemory *parent;
  GstBuffer *buf = gst_buffer_new ();
  GstMapInfo pinfo, binfo;
  guint i;

  gst_allocation_params_init (&params);
  params.prefix = 64;           /* is_span offsets must be relative to this */
  parent = gst_allocator_alloc (NULL, 16 * 256, &params);
  fill (parent, 0);
  for (i = 0; i < 16; i++)
    gst_buffer_append_memory (buf, gst_memory_share (parent, i * 256, 256));
  fail_unless_equals_int (gst_buffer_n_memory (buf), 16);

  map_read (parent, &pinfo);
  fail_unless (gst_buffer_map (buf, &binfo, GST_MAP_READ));
  fail_unless (binfo.data == pinfo.data, "merge copied instead of sharing");
  fail_unless_equals_int (binfo.size, 16 * 256);
  fail_unless (memcmp (binfo.data, pinfo.data, binfo.size) == 0);
  gst_buffer_unmap (buf, &binfo);
  gst_memory_unmap (parent, &pinfo);

  /* non-contiguous shares are merged by copying, into the default allocator: ours */
  {
    GstBuffer *gap = gst_buffer_new ();
    GstMemory *merged;

    gst_buffer_append_memory (gap, gst_memory_share (parent, 0, 100));
    gst_buffer_append_memory (gap, gst_memory_share (parent, 200, 100));
    fail_unless (gst_buffer_map (gap, &binfo, GST_MAP_READ));
    map_read (parent, &pinfo);
    fail_unless (binfo.data != pinfo.data);
    fail_unless (memcmp (binfo.data, pinfo.data, 100) == 0);
    fail_unless (memcmp (binfo.data + 100, pinfo.data + 200, 100) == 0);
    gst_memory_unmap (parent, &pinfo);
    gst_buffer_unmap (gap, &binfo);
    merged = gst_buffer_get_all_memory (gap);
    fail_unless (gst_memory_is_type (merged, MEMKIT_TYPE));
    gst_memory_unref (merged);
    gst_buffer_unref (gap);
  }

  gst_buffer_unref (buf);
  gst_memory_unref (parent);
}

GST_END_TEST;

GST_START_TEST (test_is_span_offset_relative_to_prefixed_parent)
{
  GstAllocationParams params;
  GstMemory *parent, *a, *b, *merged;
  gsize offset = 12345;
  GstMapInfo ainfo, minfo;

  gst_allocation_params_init (&params);
  params.prefix = 64;
  parent = gst_allocator_alloc (NULL, 100, &params);
  a = gst_memory_share (parent, 20, 10);
  b = gst_memory_share (parent, 30, 20);
  fail_unless (gst_memory_is_span (a, b, &offset));
  fail_unless_equals_int (offset, 20);
  fail_unless (gst_memory_is_span (a, b, NULL));
  /* order matters (and, as with SystemMemory, *offset is written even on FALSE) */
  {
    gsize unused;

    fail_if (gst_memory_is_span (b, a, &unused));
  }

  merged = gst_memory_share (parent, offset, 30);
  map_read (a, &ainfo);
  map_read (merged, &minfo);
  fail_unless (ainfo.data == minfo.data);
  gst_memory_unmap (merged, &minfo);
  gst_memory_unmap (a, &ainfo);

  gst_memory_unref (merged);
  gst_memory_unref (a);
  gst_memory_unref (b);
  gst_memory_unref (parent);
}

GST_END_TEST;

GST_START_TEST (test_share_semantics)
{
  GstMemory *mem = gst_allocator_alloc (NULL, 200, NULL);
  GstMemory *s1, *s2;
  GstMapInfo info;

  s1 = gst_memory_share (mem, 10, -1);
  fail_unless_equals_int (s1->size, 190);
  fail_unless_equals_int (s1->offset, 10);
  fail_unless (s1->parent == mem);
  fail_unless (GST_MEMORY_IS_READONLY (s1));
  fail_unless_equals_int (s1->maxsize, mem->maxsize);
  /* a share of a share points at the root */
  s2 = gst_memory_share (s1, 5, 5);
  fail_unless (s2->parent == mem);
  fail_unless_equals_int (s2->offset, 15);
  /* shares are read-only */
  fail_if (gst_memory_map (s2, &info, GST_MAP_WRITE));
  /* empty share */
  gst_memory_unref (s2);
  s2 = gst_memory_share (mem, 200, 0);
  fail_unless (s2 != NULL);
  fail_unless_equals_int (s2->size, 0);
  gst_memory_unref (s2);
  /* out of range: NULL, no crash */
  fail_unless (gst_memory_share (mem, 0, 300) == NULL);
  fail_unless (gst_memory_share (mem, 201, -1) == NULL);
  fail_unless (gst_memory_share (mem, -1, 10) == NULL);
  /* mapped for writing: refused */
  fail_unless (gst_memory_map (mem, &info, GST_MAP_WRITE));
  fail_unless (gst_memory_share (mem, 0, 10) == NULL);
  gst_memory_unmap (mem, &info);

  gst_memory_unref (s1);
  gst_memory_unref (mem);
}

GST_END_TEST;

GST_START_TEST (test_no_share_is_a_critical)
{
  GstAllocationParams params;
  GstMemory *mem;

  gst_allocation_params_init (&params);
  params.flags = GST_MEMORY_FLAG_NO_SHARE;
  mem = gst_allocator_alloc (NULL, 10, &params);
  ASSERT_CRITICAL (fail_unless (gst_memory_share (mem, 0, 5) == NULL));
  gst_memory_unref (mem);
}

GST_END_TEST;

GST_START_TEST (test_copy_keeps_alignment_and_works_while_write_mapped)
{
  GstAllocationParams params;
  GstMemory *mem, *copy;
  GstMapInfo winfo, cinfo;

  gst_allocation_params_init (&params);
  params.align = 4095;
  params.prefix = 7;
  mem = gst_allocator_alloc (NULL, 300, &params);
  fill (mem, 3);
  fail_unless (gst_memory_map (mem, &winfo, GST_MAP_WRITE));
  winfo.data[0] = 0xEE;
  copy = gst_memory_copy (mem, 0, -1);
  fail_unless (copy != NULL);
  fail_unless (gst_memory_is_type (copy, MEMKIT_TYPE));
  fail_unless (copy->parent == NULL);
  fail_unless (gst_memory_is_writable (copy));
  fail_unless_equals_int (copy->align, 4095);
  fail_unless_equals_int (copy->size, 300);
  map_read (copy, &cinfo);
  fail_unless (((guintptr) cinfo.data & 4095) == 0);
  fail_unless_equals_int (cinfo.data[0], 0xEE);
  fail_unless (memcmp (cinfo.data, winfo.data, 300) == 0);
  gst_memory_unmap (copy, &cinfo);
  gst_memory_unmap (mem, &winfo);
  gst_memory_unref (copy);

  /* offset past the end with size -1: an empty copy */
  copy = gst_memory_copy (mem, 400, -1);
  fail_unless (copy != NULL);
  fail_unless_equals_int (copy->size, 0);
  gst_memory_unref (copy);
  /* out of range: NULL, no crash */
  fail_unless (gst_memory_copy (mem, 0, 5000) == NULL);
  fail_unless (gst_memory_copy (mem, -100, 10) == NULL);
  gst_memory_unref (mem);
}

GST_END_TEST;

GST_START_TEST (test_buffer_copy_region)
{
  GstBuffer *buf = gst_buffer_new_allocate (NULL, 1000, NULL);
  GstBuffer *region, *deep;
  GstMapInfo binfo, rinfo;

  gst_buffer_memset (buf, 0, 0x11, 1000);
  /* a region copy shares the memory */
  region = gst_buffer_copy_region (buf, GST_BUFFER_COPY_MEMORY, 100, 200);
  fail_unless_equals_int (gst_buffer_get_size (region), 200);
  fail_unless (gst_buffer_map (buf, &binfo, GST_MAP_READ));
  fail_unless (gst_buffer_map (region, &rinfo, GST_MAP_READ));
  fail_unless (rinfo.data == binfo.data + 100);
  gst_buffer_unmap (region, &rinfo);

  /* a deep region copy copies, into aligned memory */
  deep = gst_buffer_copy_region (buf, GST_BUFFER_COPY_MEMORY | GST_BUFFER_COPY_DEEP, 100,
      200);
  fail_unless (gst_memory_is_type (gst_buffer_peek_memory (deep, 0), MEMKIT_TYPE));
  fail_unless (gst_buffer_map (deep, &rinfo, GST_MAP_READ));
  fail_unless (rinfo.data != binfo.data + 100);
  fail_unless (((guintptr) rinfo.data & 63) == 0);
  fail_unless (memcmp (rinfo.data, binfo.data + 100, 200) == 0);
  gst_buffer_unmap (deep, &rinfo);
  gst_buffer_unmap (buf, &binfo);

  gst_buffer_unref (deep);
  gst_buffer_unref (region);
  gst_buffer_unref (buf);
}

GST_END_TEST;

GST_START_TEST (test_buffer_resize)
{
  GstBuffer *buf = gst_buffer_new_allocate (NULL, 100, NULL);
  gsize offset, maxsize, size;

  size = gst_buffer_get_sizes (buf, &offset, &maxsize);
  fail_unless_equals_int (size, 100);
  fail_unless_equals_int (maxsize, 128);
  /* grow into the tail slack that the rounded maxsize makes usable */
  gst_buffer_resize (buf, 0, 128);
  fail_unless_equals_int (gst_buffer_get_size (buf), 128);
  gst_buffer_resize (buf, 10, 50);
  size = gst_buffer_get_sizes (buf, &offset, &maxsize);
  fail_unless_equals_int (size, 50);
  fail_unless_equals_int (offset, 10);
  gst_buffer_set_size (buf, 0);
  fail_unless_equals_int (gst_buffer_get_size (buf), 0);
  gst_buffer_unref (buf);
}

GST_END_TEST;

GST_START_TEST (test_buffer_make_writable)
{
  GstBuffer *buf = gst_buffer_new_allocate (NULL, 64, NULL);
  GstBuffer *other;
  GstMapInfo info, oinfo;

  gst_buffer_memset (buf, 0, 0x22, 64);
  other = gst_buffer_ref (buf);
  buf = gst_buffer_make_writable (buf);
  fail_unless (buf != other);
  /* the memory is now held by two buffers: a write map copies it, into aligned memory */
  fail_unless (gst_buffer_map (buf, &info, GST_MAP_WRITE));
  fail_unless (gst_memory_is_type (gst_buffer_peek_memory (buf, 0), MEMKIT_TYPE));
  fail_unless (((guintptr) info.data & 63) == 0);
  info.data[0] = 0x33;
  fail_unless (gst_buffer_map (other, &oinfo, GST_MAP_READ));
  fail_unless (oinfo.data != info.data);
  fail_unless_equals_int (oinfo.data[0], 0x22);
  gst_buffer_unmap (other, &oinfo);
  gst_buffer_unmap (buf, &info);
  gst_buffer_unref (other);
  gst_buffer_unref (buf);
}

GST_END_TEST;

GST_START_TEST (test_make_mapped)
{
  GstMemory *mem = gst_allocator_alloc (NULL, 64, NULL);
  GstMemory *share, *mapped;
  GstMapInfo info;
  guint8 *base;

  fill (mem, 5);
  base = map_read (mem, &info);
  gst_memory_unmap (mem, &info);

  /* writable memory: mapped in place */
  gst_memory_ref (mem);
  mapped = gst_memory_make_mapped (mem, &info, GST_MAP_WRITE);
  fail_unless (mapped == mem);
  fail_unless (info.data == base);
  gst_memory_unmap (mapped, &info);
  gst_memory_unref (mapped);

  /* a read-only share asked for writing: a writable copy from our allocator */
  share = gst_memory_share (mem, 8, 16);
  mapped = gst_memory_make_mapped (share, &info, GST_MAP_WRITE);
  fail_unless (mapped != NULL);
  fail_unless (mapped != share);
  fail_unless (gst_memory_is_type (mapped, MEMKIT_TYPE));
  fail_unless (info.data != base + 8);
  fail_unless_equals_int (info.size, 16);
  fail_unless_equals_int (info.data[0], 5 + 8);
  gst_memory_unmap (mapped, &info);
  gst_memory_unref (mapped);

  /* NOT_MAPPABLE refuses to map; make_mapped then falls back to a (mappable) copy, as it
   * does for SystemMemory */
  {
    GstAllocationParams params;
    GstMemory *nm;

    gst_allocation_params_init (&params);
    params.flags = GST_MEMORY_FLAG_NOT_MAPPABLE;
    nm = gst_allocator_alloc (NULL, 16, &params);
    fail_if (gst_memory_map (nm, &info, GST_MAP_READ));
    gst_memory_ref (nm);
    mapped = gst_memory_make_mapped (nm, &info, GST_MAP_READ);
    fail_unless (mapped != NULL && mapped != nm);
    fail_unless (gst_memory_is_type (mapped, MEMKIT_TYPE));
    fail_if (GST_MEMORY_FLAG_IS_SET (mapped, GST_MEMORY_FLAG_NOT_MAPPABLE));
    fail_unless_equals_int (info.size, 16);
    gst_memory_unmap (mapped, &info);
    gst_memory_unref (mapped);
    gst_memory_unref (nm);
  }
  gst_memory_unref (mem);
}

GST_END_TEST;

GST_START_TEST (test_bad_input_gives_null_or_critical)
{
  GstAllocationParams params;

  /* sizes that overflow: NULL, no crash */
  fail_unless (gst_allocator_alloc (NULL, G_MAXSIZE, NULL) == NULL);
  fail_unless (gst_allocator_alloc (NULL, G_MAXSSIZE, NULL) == NULL);
  gst_allocation_params_init (&params);
  params.prefix = G_MAXSIZE - 10;
  fail_unless (gst_allocator_alloc (NULL, 100, &params) == NULL);
  gst_allocation_params_init (&params);
  params.padding = G_MAXSIZE;
  fail_unless (gst_allocator_alloc (NULL, 1, &params) == NULL);
  /* G_MAXSIZE is a valid mask to core, but no allocator can honour it */
  gst_allocation_params_init (&params);
  params.align = G_MAXSIZE;
  fail_unless (gst_allocator_alloc (NULL, 1, &params) == NULL);
  /* not a mask: core refuses with a critical before calling us */
  gst_allocation_params_init (&params);
  params.align = 100;
  ASSERT_CRITICAL (gst_allocator_alloc (NULL, 1, &params));
}

GST_END_TEST;

GST_START_TEST (test_resize_clears_zero_flags)
{
  GstAllocationParams params;
  GstMemory *mem;

  gst_allocation_params_init (&params);
  params.prefix = 16;
  params.padding = 16;
  params.flags = GST_MEMORY_FLAG_ZERO_PREFIXED | GST_MEMORY_FLAG_ZERO_PADDED;
  mem = gst_allocator_alloc (NULL, 100, &params);
  gst_memory_resize (mem, 0, 90);
  fail_if (GST_MEMORY_IS_ZERO_PADDED (mem));
  fail_unless (GST_MEMORY_IS_ZERO_PREFIXED (mem));
  gst_memory_resize (mem, 1, 80);
  fail_if (GST_MEMORY_IS_ZERO_PREFIXED (mem));
  gst_memory_unref (mem);
}

GST_END_TEST;

/* The recycling cache, as a C user sees it: the allocator's properties, a block reused with
 * its ZERO ranges zeroed again, and no reference on the registered allocator per memory.
 * Runs with the cache on (its default) and off (MEMKIT_MAX_CACHED_BYTES=0, or protect mode). */
GST_START_TEST (test_cache_properties_and_reuse)
{
  guint64 max = 0, cached = 0;
  GstAllocationParams params;
  GstMemory *mem, *again;
  GstMapInfo info;
  gint refs = GST_OBJECT_REFCOUNT_VALUE (aligned);
  const gchar *env = g_getenv ("MEMKIT_MAX_CACHED_BYTES");
  gboolean on = env == NULL || g_strcmp0 (env, "0") != 0;
  /* protect mode (MEMKIT_GUARD=protect...) quarantines freed blocks instead of caching them */
  const gchar *guard = g_getenv ("MEMKIT_GUARD");
  gboolean caches = on && !(guard != NULL && g_str_has_prefix (guard, "protect"));

  g_object_get (aligned, "max-cached-bytes", &max, NULL);
  fail_unless_equals_uint64 (max, on ? (guint64) 64 << 20 : 0);

  gst_allocation_params_init (&params);
  params.flags = GST_MEMORY_FLAG_ZERO_PREFIXED | GST_MEMORY_FLAG_ZERO_PADDED;
  params.prefix = 64;
  params.padding = 64;
  mem = gst_allocator_alloc (aligned, 1000, &params);
  fail_unless_equals_int (GST_OBJECT_REFCOUNT_VALUE (aligned), refs);
  /* dirty the whole region, then free it */
  gst_memory_resize (mem, -64, mem->maxsize);
  fail_unless (gst_memory_map (mem, &info, GST_MAP_WRITE));
  memset (info.data, 0xaa, info.size);
  gst_memory_unmap (mem, &info);
  gst_memory_unref (mem);

  g_object_get (aligned, "cached-bytes", &cached, NULL);
  if (caches)
    fail_unless (cached >= 1152);
  else
    fail_unless_equals_uint64 (cached, 0);

  again = gst_allocator_alloc (aligned, 1000, &params);
  fail_unless_equals_int (again->offset, 64);
  fail_unless_equals_int (again->size, 1000);
  fail_unless (GST_MEMORY_IS_ZERO_PREFIXED (again));
  fail_unless (GST_MEMORY_IS_ZERO_PADDED (again));
  fail_unless (gst_memory_is_writable (again));
  gst_memory_resize (again, -64, again->maxsize);
  fail_unless (gst_memory_map (again, &info, GST_MAP_READ));
  for (gsize i = 0; i < 64; i++)
    fail_unless_equals_int (info.data[i], 0);
  for (gsize i = 1064; i < info.size; i++)
    fail_unless_equals_int (info.data[i], 0);
  gst_memory_unmap (again, &info);
  gst_memory_unref (again);
  fail_unless_equals_int (GST_OBJECT_REFCOUNT_VALUE (aligned), refs);
}

GST_END_TEST;

static guint64
stat (const gchar * field)
{
  GstStructure *s = NULL;
  guint64 v = G_MAXUINT64;

  g_object_get (aligned, "stats", &s, NULL);
  fail_unless (s != NULL);
  fail_unless_equals_string (gst_structure_get_name (s), "memkit-allocator-stats");
  fail_unless (gst_structure_get_uint64 (s, field, &v), "no field %s", field);
  gst_structure_free (s);
  return v;
}

/* Statistics read with g_object_get after a scripted sequence, and reset. */
GST_START_TEST (test_stats_exact_counts)
{
  GstMemory *a, *b, *s1, *s2, *copy;
  GstMapInfo info;
  gsize offset;

  g_signal_emit_by_name (aligned, "reset-stats");
  fail_unless_equals_uint64 (stat ("allocations"), 0);
  fail_unless_equals_uint64 (stat ("blocks-live"), 0);

  a = gst_allocator_alloc (aligned, 1000, NULL);       /* maxsize 1024 */
  b = gst_allocator_alloc (aligned, 5000, NULL);       /* maxsize 5056 */
  s1 = gst_memory_share (a, 0, 100);
  s2 = gst_memory_share (a, 100, 200);
  fail_unless (gst_memory_is_span (s1, s2, &offset));
  fail_unless (gst_memory_map (b, &info, GST_MAP_WRITE));
  gst_memory_unmap (b, &info);
  fail_unless (gst_memory_map (s1, &info, GST_MAP_READ));
  gst_memory_unmap (s1, &info);
  copy = gst_memory_copy (b, 0, 3000);                 /* maxsize 3008 */

  fail_unless_equals_uint64 (stat ("allocations"), 3);
  fail_unless_equals_uint64 (stat ("cache-hits") + stat ("cache-misses"), 3);
  fail_unless_equals_uint64 (stat ("blocks-live"), 3);
  fail_unless_equals_uint64 (stat ("bytes-live"), 1024 + 5056 + 3008);
  fail_unless_equals_uint64 (stat ("shares"), 2);
  fail_unless_equals_uint64 (stat ("span-hits"), 1);
  /* Maps are counted on the memory and added when it is freed. */
  fail_unless_equals_uint64 (stat ("maps"), 0);
  fail_unless_equals_uint64 (stat ("copies"), 1);
  fail_unless_equals_uint64 (stat ("bytes-copied"), 3000);
  fail_unless_equals_uint64 (stat ("guard-violations"), 0);

  gst_memory_unref (s1);
  fail_unless_equals_uint64 (stat ("maps"), 1);
  gst_memory_unref (s2);
  gst_memory_unref (copy);
  gst_memory_unref (a);
  gst_memory_unref (b);
  fail_unless_equals_uint64 (stat ("maps"), 2);
  fail_unless_equals_uint64 (stat ("frees"), 3);
  fail_unless_equals_uint64 (stat ("blocks-live"), 0);
  fail_unless_equals_uint64 (stat ("bytes-live"), 0);
  fail_unless (stat ("peak-bytes") >= 1024 + 5056 + 3008);

  g_signal_emit_by_name (aligned, "reset-stats");
  fail_unless_equals_uint64 (stat ("frees"), 0);
  fail_unless_equals_uint64 (stat ("shares"), 0);
}

GST_END_TEST;

/* MemfdMemory from C: fd memory, shares of shares with the right size, spans, and a buffer
 * of contiguous shares that maps without copying. */
GST_START_TEST (test_memfd_memory)
{
  GstAllocator *memfd = gst_allocator_find ("MemfdMemory");
  GstMemory *mem, *share, *sub, *a, *b;
  GstAllocationParams params;
  GstBuffer *buf;
  GstMapInfo info, binfo;
  gsize offset;

  fail_unless (memfd != NULL);
  fail_unless (GST_IS_FD_ALLOCATOR (memfd));
  gst_allocation_params_init (&params);
  params.prefix = 100;
  mem = gst_allocator_alloc (memfd, 8000, &params);
  fail_unless (gst_is_fd_memory (mem));
  fail_unless (gst_fd_memory_get_fd (mem) >= 0);
  fail_unless_equals_int (mem->offset, 128);
  fail_unless_equals_int (mem->maxsize, 8192);
  fail_unless (gst_memory_map (mem, &info, GST_MAP_WRITE));
  for (gsize i = 0; i < info.size; i++)
    info.data[i] = (guint8) i;
  gst_memory_unmap (mem, &info);

  share = gst_memory_share (mem, 1000, 3000);
  sub = gst_memory_share (share, 500, -1);
  fail_unless_equals_int (sub->size, 2500);
  fail_unless_equals_int (sub->offset, 128 + 1500);
  fail_unless (gst_memory_share (mem, 0, 9000) == NULL);

  a = gst_memory_share (mem, 0, 4000);
  b = gst_memory_share (mem, 4000, 4000);
  fail_unless (gst_memory_is_span (a, b, &offset));
  fail_unless_equals_int (offset, 0);
  buf = gst_buffer_new ();
  gst_buffer_append_memory (buf, a);
  gst_buffer_append_memory (buf, b);
  fail_unless (gst_memory_map (mem, &info, GST_MAP_READ));
  fail_unless (gst_buffer_map (buf, &binfo, GST_MAP_READ));
  fail_unless (binfo.data == info.data, "contiguous shares map without copying");
  gst_buffer_unmap (buf, &binfo);
  gst_memory_unmap (mem, &info);

  gst_buffer_unref (buf);
  gst_memory_unref (sub);
  gst_memory_unref (share);
  gst_memory_unref (mem);
  gst_object_unref (memfd);
}

GST_END_TEST;

/* The permissions of the mapping in /proc/self/maps that holds `addr` ("rw-s", ...), or "". */
static void
mapping_perms (gconstpointer addr, gchar perms[5])
{
  gchar *maps = NULL, **lines;

  perms[0] = '\0';
  fail_unless (g_file_get_contents ("/proc/self/maps", &maps, NULL, NULL));
  lines = g_strsplit (maps, "\n", -1);
  for (gchar ** l = lines; *l != NULL; l++) {
    guint64 start, end;
    gchar p[5];
    if (sscanf (*l, "%" G_GINT64_MODIFIER "x-%" G_GINT64_MODIFIER "x %4s", &start, &end,
            p) == 3 && (guint64) (gsize) addr >= start && (guint64) (gsize) addr < end) {
      memcpy (perms, p, 5);
      break;
    }
  }
  g_strfreev (lines);
  g_free (maps);
}

/* Issue 20, point 1: code that writes through a READ mapping (wrong, as GStreamer's own
 * gst_video_overlay_rectangle_apply_global_alpha does) behaves with MemfdMemory as with
 * SystemMemory: the block is kept mapped read-write from its first map, and GstFdMemory never
 * flips it read-only (before: the first map was WRITE only, a later READ map mprotect()ed the
 * mapping read-only and the write died with SIGSEGV). */
GST_START_TEST (test_memfd_read_mapping_is_writable_as_system_memory)
{
  GstAllocator *memfd = gst_allocator_find ("MemfdMemory");
  GstMemory *mem;
  GstMapInfo info;
  gchar perms[5];

  for (gint round = 0; round < 2; round++) {    /* a fresh block, then a recycled one */
    mem = gst_allocator_alloc (memfd, 4096, NULL);
    fail_unless (gst_memory_map (mem, &info, GST_MAP_READ));
    mapping_perms (info.data, perms);
    fail_unless_equals_string (perms, "rw-s");
    info.data[0] = 0x5a;        /* the bug this test stands for */
    gst_memory_unmap (mem, &info);
    fail_unless (gst_memory_map (mem, &info, GST_MAP_READ));
    fail_unless_equals_int (info.data[0], 0x5a);
    gst_memory_unmap (mem, &info);
    gst_memory_unref (mem);
  }
  gst_object_unref (memfd);
}

GST_END_TEST;

/* Hardening (issue 9, fault 8): a recycled MemfdMemory block gives the same answer as a fresh
 * memfd for every flag combination, ZERO_* together with READONLY or NOT_MAPPABLE included.
 * Each request is made twice: first after a plain block of the same size was freed (so the
 * cache hands it back), then at a size never freed before (a fresh memfd); both succeed. */
GST_START_TEST (test_memfd_recycled_block_same_answer)
{
  GstAllocator *memfd = gst_allocator_find ("MemfdMemory");
  const GstMemoryFlags combos[] = {
    GST_MEMORY_FLAG_ZERO_PREFIXED | GST_MEMORY_FLAG_READONLY,
    GST_MEMORY_FLAG_ZERO_PADDED | GST_MEMORY_FLAG_READONLY,
    GST_MEMORY_FLAG_ZERO_PREFIXED | GST_MEMORY_FLAG_NOT_MAPPABLE,
    GST_MEMORY_FLAG_ZERO_PADDED | GST_MEMORY_FLAG_NOT_MAPPABLE,
    GST_MEMORY_FLAG_ZERO_PREFIXED | GST_MEMORY_FLAG_ZERO_PADDED,
  };

  for (guint i = 0; i < G_N_ELEMENTS (combos); i++) {
    for (guint fresh = 0; fresh < 2; fresh++) {
      GstAllocationParams params;
      GstMemory *mem;
      GstMapInfo info;
      gsize size = fresh ? 100000 + i * 8192 : 3000;

      gst_allocation_params_init (&params);
      params.prefix = 64;
      params.padding = 100;
      if (!fresh) {
        /* A dirty block of the same size goes back to the cache. */
        GstMemory *dirty = gst_allocator_alloc (memfd, size, &params);
        fail_unless (dirty != NULL);
        gst_memory_resize (dirty, -(gssize) dirty->offset, dirty->maxsize);
        fail_unless (gst_memory_map (dirty, &info, GST_MAP_WRITE));
        memset (info.data, 0xee, info.size);
        gst_memory_unmap (dirty, &info);
        gst_memory_unref (dirty);
      }
      params.flags = combos[i];
      mem = gst_allocator_alloc (memfd, size, &params);
      fail_unless (mem != NULL, "flags %#x, %s block: NULL", combos[i],
          fresh ? "fresh" : "recycled");
      fail_unless_equals_int (GST_MINI_OBJECT_FLAGS (mem) & combos[i], combos[i]);
      fail_unless_equals_int (mem->size, size);
      if (!(combos[i] & (GST_MEMORY_FLAG_READONLY | GST_MEMORY_FLAG_NOT_MAPPABLE))) {
        /* The zeroed ranges read as zeros, recycled or not. */
        gst_memory_resize (mem, -(gssize) mem->offset, mem->maxsize);
        fail_unless (gst_memory_map (mem, &info, GST_MAP_READ));
        for (gsize b = 0; b < 64; b++)
          fail_unless_equals_int (info.data[b], 0);
        for (gsize b = 64 + size; b < info.size; b++)
          fail_unless_equals_int (info.data[b], 0);
        gst_memory_unmap (mem, &info);
      }
      if (combos[i] & GST_MEMORY_FLAG_READONLY)
        fail_if (gst_memory_map (mem, &info, GST_MAP_WRITE));
      if (combos[i] & GST_MEMORY_FLAG_NOT_MAPPABLE)
        fail_if (gst_memory_map (mem, &info, GST_MAP_READ));
      gst_memory_unref (mem);
    }
  }
  gst_object_unref (memfd);
}

GST_END_TEST;

/* Hardening (issue 9, fault 9): one stray gst_memory_unmap (a CRITICAL from core) does not
 * poison the block: it still maps read-write, and so does the recycled block a later,
 * unrelated allocation of the same size gets. */
GST_START_TEST (test_memfd_stray_unmap_does_not_poison)
{
  GstAllocator *memfd = gst_allocator_find ("MemfdMemory");
  GstMemory *mem;
  GstMapInfo info, stray;

  for (guint round = 0; round < 2; round++) {
    mem = gst_allocator_alloc (memfd, 5000, NULL);
    fail_unless (mem != NULL);
    /* A read-only mapping first, so a later write map needs the block's map count at 0. */
    fail_unless (gst_memory_map (mem, &info, GST_MAP_READ));
    stray = info;
    gst_memory_unmap (mem, &info);
    ASSERT_CRITICAL (gst_memory_unmap (mem, &stray));
    fail_unless (gst_memory_map (mem, &info, GST_MAP_WRITE),
        "round %u: a read-write map after a stray unmap", round);
    info.data[0] = 1;
    gst_memory_unmap (mem, &info);
    gst_memory_unref (mem);
  }
  /* The next owner of the recycled block maps it read-write too. */
  mem = gst_allocator_alloc (memfd, 5000, NULL);
  fail_unless (gst_memory_map (mem, &info, GST_MAP_READ | GST_MAP_WRITE));
  gst_memory_unmap (mem, &info);
  gst_memory_unref (mem);
  gst_object_unref (memfd);
}

GST_END_TEST;

#if GST_CHECK_VERSION(1, 26, 0)
/* GStreamer >= 1.26 fires the memory-init and memory-free-pre/post tracer hooks from
 * gst_memory_init and core's free: with a tracer active, memkit's memories go through them
 * too, so a tracer counts AlignedMemory and MemfdMemory like SystemMemory. */
typedef struct
{
  GstTracer parent;
} CountTracer;
typedef struct
{
  GstTracerClass parent_class;
} CountTracerClass;
G_DEFINE_TYPE (CountTracer, count_tracer, GST_TYPE_TRACER);
static void
count_tracer_class_init (CountTracerClass * klass)
{
}

static void
count_tracer_init (CountTracer * self)
{
}

static GstAllocator *counted;
static gint inits, frees_pre, frees_post;

static void
on_memory_init (GObject * self, GstClockTime ts, GstMemory * mem)
{
  if (mem->allocator == counted)
    inits++;
}

static void
on_memory_free_pre (GObject * self, GstClockTime ts, GstMemory * mem)
{
  if (mem->allocator == counted)
    frees_pre++;
}

static void
on_memory_free_post (GObject * self, GstClockTime ts, GstMemory * mem)
{
  frees_post++;
}

GST_START_TEST (test_memory_tracer_hooks_see_every_allocator)
{
  const gchar *names[] = { "SystemMemory", "AlignedMemory", "MemfdMemory" };
  GstTracer *tracer = g_object_new (count_tracer_get_type (), NULL);

  gst_tracing_register_hook (tracer, "memory-init", G_CALLBACK (on_memory_init));
  gst_tracing_register_hook (tracer, "memory-free-pre",
      G_CALLBACK (on_memory_free_pre));
  gst_tracing_register_hook (tracer, "memory-free-post",
      G_CALLBACK (on_memory_free_post));
  for (guint i = 0; i < G_N_ELEMENTS (names); i++) {
    counted = gst_allocator_find (names[i]);
    fail_unless (counted != NULL);
    inits = frees_pre = frees_post = 0;
    for (gint n = 0; n < 100; n++) {
      GstMemory *mem = gst_allocator_alloc (counted, 4096, NULL);
      GstMemory *share = gst_memory_share (mem, 0, 100);
      gst_memory_unref (share);
      gst_memory_unref (mem);
    }
    /* Each round: the memory and its share. */
    fail_unless (inits == 200, "%s: memory-init fired %d times, not 200", names[i], inits);
    fail_unless (frees_pre == 200, "%s: memory-free-pre fired %d times, not 200", names[i],
        frees_pre);
    fail_unless (frees_post == 200, "%s: memory-free-post fired %d times, not 200",
        names[i], frees_post);
    gst_object_unref (counted);
  }
  /* The tracing framework keeps its reference to the tracer for the process. */
  gst_object_unref (tracer);
}

GST_END_TEST;
#endif

/* ---- the contract on both allocators: the same checks, looped over AlignedMemory and
 * MemfdMemory (MemfdMemory rounds the prefix up to the alignment: its mapping starts on a
 * page, so the payload is aligned through its offset). */

static const gchar *both[] = { "AlignedMemory", "MemfdMemory" };

static GstAllocator *
find_nth (gint i)
{
  GstAllocator *a = gst_allocator_find (both[i]);
  fail_unless (a != NULL, "%s not registered", both[i]);
  return a;
}

GST_START_TEST (test_both_alloc_fields)
{
  GstAllocator *a = find_nth (__i__);
  GstAllocationParams params;
  GstMemory *mem;
  GstMapInfo info;
  gsize want = __i__ == 0 ? 64 : 256;

  gst_allocation_params_init (&params);
  params.align = 255;
  params.prefix = 64;
  params.padding = 32;
  mem = gst_allocator_alloc (a, 1000, &params);
  fail_unless (mem != NULL);
  fail_unless (mem->allocator == a);
  fail_unless (mem->parent == NULL);
  fail_unless_equals_int (mem->size, 1000);
  fail_unless_equals_int (mem->offset, want);
  fail_unless (mem->maxsize >= want + 1000 + 32);
  fail_unless (gst_memory_is_writable (mem));
  fail_unless (gst_memory_map (mem, &info, GST_MAP_READ));
  fail_unless (((guintptr) info.data) % 256 == 0, "%s: payload aligned", both[__i__]);
  gst_memory_unmap (mem, &info);
  gst_memory_unref (mem);
  gst_object_unref (a);
}

GST_END_TEST;

GST_START_TEST (test_both_zero_flags)
{
  GstAllocator *a = find_nth (__i__);
  GstAllocationParams params;
  GstMemory *mem;
  GstMapInfo info;
  gsize i, offset, maxsize;

  gst_allocation_params_init (&params);
  params.flags = GST_MEMORY_FLAG_ZERO_PREFIXED | GST_MEMORY_FLAG_ZERO_PADDED;
  params.prefix = 64;
  params.padding = 64;
  mem = gst_allocator_alloc (a, 777, &params);
  fail_unless (GST_MEMORY_IS_ZERO_PREFIXED (mem) && GST_MEMORY_IS_ZERO_PADDED (mem));
  offset = mem->offset;
  maxsize = mem->maxsize;
  gst_memory_resize (mem, -(gssize) offset, maxsize);
  fail_unless (gst_memory_map (mem, &info, GST_MAP_READ));
  for (i = 0; i < offset; i++)
    fail_unless_equals_int (info.data[i], 0);
  for (i = offset + 777; i < maxsize; i++)
    fail_unless_equals_int (info.data[i], 0);
  gst_memory_unmap (mem, &info);
  gst_memory_unref (mem);
  gst_object_unref (a);
}

GST_END_TEST;

GST_START_TEST (test_both_maps)
{
  GstAllocator *a = find_nth (__i__);
  GstMemory *mem = gst_allocator_alloc (a, 4096, NULL);
  GstMapInfo r1, r2, w;
  guint8 *read_data;

  fail_unless (gst_memory_map (mem, &r1, GST_MAP_READ));
  fail_unless (gst_memory_map (mem, &r2, GST_MAP_READ));
  fail_unless (r1.data == r2.data, "repeated maps give the same pointer");
  fail_if (gst_memory_map (mem, &w, GST_MAP_WRITE), "READ then WRITE fails");
  /* Kept before unmapping: since 1.28 gst_memory_unmap clears the GstMapInfo. */
  read_data = r2.data;
  gst_memory_unmap (mem, &r2);
  gst_memory_unmap (mem, &r1);
  fail_unless (gst_memory_map (mem, &w, GST_MAP_WRITE));
  fail_if (gst_memory_map (mem, &r1, GST_MAP_READ), "WRITE then READ fails");
  fail_unless (w.data == read_data);
  gst_memory_unmap (mem, &w);
  gst_memory_unref (mem);
  gst_object_unref (a);
}

GST_END_TEST;

GST_START_TEST (test_both_share)
{
  GstAllocator *a = find_nth (__i__);
  GstMemory *mem = gst_allocator_alloc (a, 3000, NULL);
  GstMemory *s1, *s2, *empty;

  s1 = gst_memory_share (mem, 100, 1000);
  fail_unless (s1->parent == mem);
  fail_unless_equals_int (s1->offset, mem->offset + 100);
  fail_unless_equals_int (s1->size, 1000);
  fail_unless (GST_MEMORY_IS_READONLY (s1));
  fail_unless_equals_int (s1->maxsize, mem->maxsize);
  s2 = gst_memory_share (s1, 200, -1);
  fail_unless (s2->parent == mem, "a share of a share points at the root");
  fail_unless_equals_int (s2->size, 800);
  empty = gst_memory_share (s1, 1000, 0);
  fail_unless (empty != NULL && empty->size == 0);
  fail_unless (gst_memory_share (s1, 500, mem->maxsize) == NULL, "past maxsize: NULL");
  fail_if (gst_memory_is_writable (mem));
  gst_memory_unref (empty);
  gst_memory_unref (s2);
  gst_memory_unref (s1);
  fail_unless (gst_memory_is_writable (mem));
  gst_memory_unref (mem);
  gst_object_unref (a);
}

GST_END_TEST;

GST_START_TEST (test_both_copy_while_write_mapped)
{
  GstAllocator *a = find_nth (__i__);
  GstAllocationParams params;
  GstMemory *mem, *copy;
  GstMapInfo w, r;

  gst_allocation_params_init (&params);
  params.align = 1023;
  mem = gst_allocator_alloc (a, 2000, &params);
  fail_unless (gst_memory_map (mem, &w, GST_MAP_WRITE));
  memset (w.data, 0x5a, w.size);
  copy = gst_memory_copy (mem, 10, 100);
  gst_memory_unmap (mem, &w);
  fail_unless (copy != NULL, "%s: copy works while write-mapped", both[__i__]);
  fail_unless (copy->allocator == a);
  fail_unless (copy->parent == NULL);
  fail_unless (gst_memory_is_writable (copy));
  fail_unless_equals_int (copy->size, 100);
  fail_unless ((copy->align & 1023) == 1023, "alignment kept");
  fail_unless (gst_memory_map (copy, &r, GST_MAP_READ));
  fail_unless (((guintptr) r.data) % 1024 == 0);
  fail_unless_equals_int (r.data[0], 0x5a);
  fail_unless_equals_int (r.data[99], 0x5a);
  gst_memory_unmap (copy, &r);
  gst_memory_unref (copy);
  copy = gst_memory_copy (mem, 0, 0);
  fail_unless (copy != NULL && copy->size == 0, "an empty copy");
  gst_memory_unref (copy);
  gst_memory_unref (mem);
  gst_object_unref (a);
}

GST_END_TEST;

GST_START_TEST (test_both_not_mappable)
{
  GstAllocator *a = find_nth (__i__);
  GstAllocationParams params;
  GstMemory *mem, *mapped;
  GstMapInfo info;

  gst_allocation_params_init (&params);
  params.flags = GST_MEMORY_FLAG_NOT_MAPPABLE;
  mem = gst_allocator_alloc (a, 100, &params);
  fail_if (gst_memory_map (mem, &info, GST_MAP_READ), "%s: NOT_MAPPABLE", both[__i__]);
  mapped = gst_memory_make_mapped (mem, &info, GST_MAP_READ);
  fail_unless (mapped != NULL, "make_mapped falls back to a mappable copy");
  fail_unless_equals_int (info.size, 100);
  gst_memory_unmap (mapped, &info);
  gst_memory_unref (mapped);
  gst_object_unref (a);
}

GST_END_TEST;

GST_START_TEST (test_both_span_and_buffer_map)
{
  GstAllocator *a = find_nth (__i__);
  GstAllocationParams params;
  GstMemory *mem;
  GstBuffer *buf = gst_buffer_new ();
  GstMapInfo info, binfo;
  gsize off = 0;
  gint k;

  gst_allocation_params_init (&params);
  params.prefix = 64;
  mem = gst_allocator_alloc (a, 8192, &params);
  for (k = 0; k < 4; k++)
    gst_buffer_append_memory (buf, gst_memory_share (mem, k * 2048, 2048));
  fail_unless (gst_memory_is_span (gst_buffer_peek_memory (buf, 1),
          gst_buffer_peek_memory (buf, 2), &off));
  fail_unless_equals_int (off, 2048);
  fail_if (gst_memory_is_span (gst_buffer_peek_memory (buf, 2),
          gst_buffer_peek_memory (buf, 1), NULL));
  fail_unless (gst_memory_map (mem, &info, GST_MAP_READ));
  fail_unless (gst_buffer_map (buf, &binfo, GST_MAP_READ));
  fail_unless (binfo.data == info.data, "%s: zero-copy", both[__i__]);
  gst_buffer_unmap (buf, &binfo);
  gst_memory_unmap (mem, &info);
  gst_buffer_unref (buf);
  gst_memory_unref (mem);
  gst_object_unref (a);
}

GST_END_TEST;

static Suite *
alignedmemory_suite (void)
{
  Suite *s = suite_create ("alignedmemory");
  TCase *tc = tcase_create ("general");

  suite_add_tcase (s, tc);
  tcase_add_checked_fixture (tc, setup, teardown);
  tcase_add_test (tc, test_registered_and_default);
  tcase_add_test (tc, test_payload_aligned_for_any_prefix);
  tcase_add_test (tc, test_zero_prefix_and_padding);
  tcase_add_test (tc, test_size_zero_maps_non_null);
  tcase_add_test (tc, test_buffer_new_allocate_uses_aligned_memory);
  tcase_add_test (tc, test_buffer_map_of_contiguous_shares_is_zero_copy);
  tcase_add_test (tc, test_is_span_offset_relative_to_prefixed_parent);
  tcase_add_test (tc, test_share_semantics);
  tcase_add_test (tc, test_no_share_is_a_critical);
  tcase_add_test (tc, test_copy_keeps_alignment_and_works_while_write_mapped);
  tcase_add_test (tc, test_buffer_copy_region);
  tcase_add_test (tc, test_buffer_resize);
  tcase_add_test (tc, test_buffer_make_writable);
  tcase_add_test (tc, test_make_mapped);
  tcase_add_test (tc, test_bad_input_gives_null_or_critical);
  tcase_add_test (tc, test_resize_clears_zero_flags);
  tcase_add_test (tc, test_cache_properties_and_reuse);
  tcase_add_test (tc, test_stats_exact_counts);
  tcase_add_test (tc, test_memfd_memory);
  tcase_add_test (tc, test_memfd_read_mapping_is_writable_as_system_memory);
  tcase_add_test (tc, test_memfd_recycled_block_same_answer);
  tcase_add_test (tc, test_memfd_stray_unmap_does_not_poison);
#if GST_CHECK_VERSION(1, 26, 0)
  tcase_add_test (tc, test_memory_tracer_hooks_see_every_allocator);
#endif

  tc = tcase_create ("both allocators");
  suite_add_tcase (s, tc);
  tcase_add_checked_fixture (tc, setup, teardown);
  tcase_add_loop_test (tc, test_both_alloc_fields, 0, 2);
  tcase_add_loop_test (tc, test_both_zero_flags, 0, 2);
  tcase_add_loop_test (tc, test_both_maps, 0, 2);
  tcase_add_loop_test (tc, test_both_share, 0, 2);
  tcase_add_loop_test (tc, test_both_copy_while_write_mapped, 0, 2);
  tcase_add_loop_test (tc, test_both_not_mappable, 0, 2);
  tcase_add_loop_test (tc, test_both_span_and_buffer_map, 0, 2);
  return s;
}

GST_CHECK_MAIN (alignedmemory);
