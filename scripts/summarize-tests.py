#!/usr/bin/python3
"""Prints one closing line counting the individual tests of every meson suite: cargo test's
`test result:` lines, gst-check's `Checks:` lines and unittest's `Ran N tests` lines. A meson
test whose output has none of these counts as one test; a meson test that skipped itself
(exit 77) is counted apart."""

import json
import re
import sys

passed = failed = skipped = 0
for line in open(sys.argv[1]):
    record = json.loads(line)
    out = (record.get("stdout") or "") + (record.get("stderr") or "")
    if record.get("result") == "SKIP":
        skipped += 1  # the whole meson test said it cannot run here (exit 77)
        continue
    ok = record.get("result") in ("OK", "EXPECTEDFAIL")
    counted = False
    for m in re.finditer(r"test result: \w+\. (\d+) passed; (\d+) failed", out):
        passed += int(m.group(1))
        failed += int(m.group(2))
        counted = True
    for m in re.finditer(r"Checks: (\d+), Failures: (\d+), Errors: (\d+)", out):
        bad = int(m.group(2)) + int(m.group(3))
        passed += int(m.group(1)) - bad
        failed += bad
        counted = True
    m = re.search(r"Ran (\d+) tests?", out)
    if m:
        fails = re.search(r"FAILED \((?:failures=(\d+))?(?:, )?(?:errors=(\d+))?", out)
        bad = sum(int(g) for g in fails.groups() if g) if fails else 0
        passed += int(m.group(1)) - bad
        failed += bad
        counted = True
    if not counted:
        passed, failed = (passed + 1, failed) if ok else (passed, failed + 1)
    elif not ok and failed == 0:
        failed += 1  # the suite failed (crash, timeout) even though its counts looked fine
print(f"tests: {passed} passed, {failed} failed" + (f", {skipped} skipped" if skipped else ""))
