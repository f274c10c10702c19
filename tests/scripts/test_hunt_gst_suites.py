# SPDX-License-Identifier: MPL-2.0
"""How scripts/hunt-gst-suites.py reads a check suite's output: which test each protect report
belongs to, and each test's result.

fixtures/mpegtsmux-test_align-timeout.log is an excerpt of the hunt's log of gst-plugins-bad
1.22.0's elements/mpegtsmux with memkit (lines 2-3, 158, 573599-573652, 670955 and
671053-671055 of the 671,066): test_multiple_state_change's result; two reports of test_align,
the second cut short where check killed test_align's forked child at its timeout, so that
check's result line for test_align follows the frame's indentation on the same line; two
reports of test_keyframe_flag_propagation and its result; the suite's closing summary, which
repeats test_align's error. Then which suites test nothing here, and how many tests a source
registers. No GStreamer needed: run with /usr/bin/python3 -m unittest.
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


# Outputs of suites that test nothing here, as the hunt's logs hold them (paths shortened).
FAAC = """Running suite(s): faac
Running suite faac
../libs/gst/check/gstcheck.c:518:F:general:test_adts:0: Could not create a 'faac' element
../libs/gst/check/gstcheck.c:518:F:general:test_raw:0: Could not create a 'faac' element
0%: Checks: 2, Failures: 2, Errors: 0
"""
SVTHEVCENC = """Running suite(s): svthevcenc
Running suite svthevcenc

(elements_svthevcenc:23914): GStreamer-Check-ERROR **: 12:32:42.802: Unable to create pipeline \
'bin.( svthevcenc )': no element "svthevcenc"
/x/svthevcenc.c:23:E:general:test_encode_simple:0: (after this point) Received signal 5 (Trace/breakpoint trap)
50%: Checks: 1, Failures: 0, Errors: 1
"""
NO_CHECKS = """Running suite(s): splitmuxsink-timecode
Running suite splitmuxsink-timecode
100%: Checks: 0, Failures: 0, Errors: 0
"""
PASSES = """Running suite(s): faac
../libs/gst/check/gstcheck.c:530:P:general:test_adts:0: Passed
/x/faac.c:54:F:general:test_raw:0: Error creating pipeline: no element "faac"
50%: Checks: 2, Failures: 1, Errors: 0
"""


class TestedNothingTest(unittest.TestCase):
    def why(self, name, with_memkit, without):
        suite = hunt.Suite(name, [], {})
        return hunt.tested_nothing(suite, [(hunt.results(out)[0], out)
                                           for out in (with_memkit, without)])

    def test_a_suite_whose_element_is_missing_tests_nothing(self):
        self.assertIn("faac is not installed", self.why("bad:elements/faac", FAAC, FAAC))
        self.assertIn("svthevcenc is not installed",
                      self.why("bad:elements/svthevcenc", SVTHEVCENC, SVTHEVCENC))

    def test_a_suite_that_registers_no_test_tests_nothing(self):
        why = self.why("good:elements/splitmuxsinktimecode", NO_CHECKS, NO_CHECKS)
        self.assertIn("Checks: 0", why)
        self.assertIn("timecodestamper", why)

    def test_a_suite_with_a_passing_test_tested_something(self):
        self.assertIsNone(self.why("bad:elements/faac", PASSES, FAAC))

    def test_a_suite_in_which_memkit_saw_a_violation_tested_something(self):
        suite = hunt.Suite("bad:elements/faac", [], {})
        runs = [(hunt.results(FAAC)[0], FAAC)] * 2
        self.assertIsNone(hunt.tested_nothing(suite, runs, violations=1))

    def test_a_suite_cut_short_before_any_result_is_not_called_empty(self):
        self.assertIsNone(self.why("x", "Running suite(s): x\n", "Running suite(s): x\n"))


class RegisteredTestsTest(unittest.TestCase):
    def test_tests_under_if_0_or_in_comments_are_not_registered(self):
        source = """
  tcase_add_test (tc_chain, test_one);
#if 0
  tcase_add_test (tc_chain, test_two);
#endif
  /* FIXME
     tcase_add_test (tc_chain, test_three);
   */
#ifdef HAVE_SRTP2
  tcase_add_loop_test (tc_chain, test_four, 0, 2);
#endif
"""
        self.assertEqual(hunt.registered_tests(source), 2)


if __name__ == "__main__":
    unittest.main()
