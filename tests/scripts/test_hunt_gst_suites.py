# SPDX-License-Identifier: MPL-2.0
"""How scripts/hunt-gst-suites.py reads a check suite's output: which test each protect report
belongs to, and each test's result.

fixtures/mpegtsmux-test_align-timeout.log is an excerpt of the hunt's log of gst-plugins-bad
1.22.0's elements/mpegtsmux with memkit (lines 2-3, 158, 573599-573652, 670955 and
671053-671055 of the 671,066): test_multiple_state_change's result; two reports of test_align,
the second cut short where check killed test_align's forked child at its timeout, so that
check's result line for test_align follows the frame's indentation on the same line; two
reports of test_keyframe_flag_propagation and its result; the suite's closing summary, which
repeats test_align's error. No GStreamer needed: run with /usr/bin/python3 -m unittest.
"""

import importlib.util
import os
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPTS = os.path.join(HERE, "..", "..", "scripts")
sys.path.insert(0, SCRIPTS)
_spec = importlib.util.spec_from_file_location(
    "hunt_gst_suites", os.path.join(SCRIPTS, "hunt-gst-suites.py"))
hunt = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(hunt)


def fixture(name):
    with open(os.path.join(HERE, "fixtures", name)) as f:
        return f.read()


class ResultsTest(unittest.TestCase):
    def setUp(self):
        self.res, self.reports = hunt.results(fixture("mpegtsmux-test_align-timeout.log"))[:2]

    def test_a_result_line_after_a_reports_indentation_is_the_tests_result(self):
        self.assertEqual(self.res["test_align"][0], "E")
        self.assertIn("Test timeout expired", self.res["test_align"][1])

    def test_the_reports_before_a_glued_result_line_are_that_tests(self):
        self.assertEqual(len(self.reports["test_align"]), 2)
        # the report cut short by the timeout is kept, with the lines written before the kill
        self.assertEqual(len(self.reports["test_align"][1]), 11)

    def test_the_next_tests_reports_start_after_the_glued_result_line(self):
        self.assertEqual(self.res["test_keyframe_flag_propagation"][0], "P")
        self.assertEqual(len(self.reports["test_keyframe_flag_propagation"]), 2)
        self.assertEqual(
            [hunt.protect_reports.element(r)[0]
             for r in self.reports["test_keyframe_flag_propagation"]],
            ["application", "application"])

    def test_no_report_is_lost_or_counted_twice(self):
        self.assertEqual(sum(len(r) for r in self.reports.values()), 4)
        self.assertEqual(self.reports.get("test_multiple_state_change", []), [])
        self.assertEqual(self.res["test_multiple_state_change"][0], "P")


if __name__ == "__main__":
    unittest.main()
