/* SPDX-License-Identifier: MPL-2.0 */
/* A gst-check suite with one test that writes through a GST_MAP_READ mapping: run by
 * tests/launch/test_protect.py under memkittracer(guard=protect-continue,fail-on-violation=true)
 * to show what fail-on-violation does to a gst-check suite (the test that violates fails,
 * with CK_FORK=no the whole run exits 66). Not a test on its own. */

#include <gst/check/gstcheck.h>

GST_START_TEST (test_clean)
{
  GstBuffer *buf = gst_buffer_new_allocate (NULL, 100, NULL);
  GstMapInfo info;

  fail_unless (gst_buffer_map (buf, &info, GST_MAP_WRITE));
  info.data[0] = 1;
  gst_buffer_unmap (buf, &info);
  gst_buffer_unref (buf);
}

GST_END_TEST;

GST_START_TEST (test_writes_through_a_read_mapping)
{
  GstBuffer *buf = gst_buffer_new_allocate (NULL, 100, NULL);
  GstMapInfo info;

  fail_unless (gst_buffer_map (buf, &info, GST_MAP_READ));
  info.data[0] = 1;             /* the bug */
  gst_buffer_unmap (buf, &info);
  gst_buffer_unref (buf);
}

GST_END_TEST;

static Suite *
violation_suite (void)
{
  Suite *s = suite_create ("violation");
  TCase *tc = tcase_create ("general");

  suite_add_tcase (s, tc);
  tcase_add_test (tc, test_clean);
  tcase_add_test (tc, test_writes_through_a_read_mapping);
  return s;
}

GST_CHECK_MAIN (violation);
