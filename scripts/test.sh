#!/bin/sh
# Command 2 of the README: install what is missing, then run every gate and test suite:
# cargo fmt, clippy, and through meson: Rust (cargo test), C gst-check, C under valgrind,
# and Python GI.
set -eu
cd "$(dirname "$0")/.."
./scripts/install-deps.sh

echo "== cargo fmt --check"
cargo fmt --check
echo "== cargo clippy"
cargo clippy --all-targets --locked -- -D warnings

if [ ! -f builddir/build.ninja ]; then
    meson setup builddir
fi
meson compile -C builddir
echo "== meson test"
status=0
meson test -C builddir --print-errorlogs --num-processes 2 || status=$?

# One closing line that counts the tests of every suite.
if [ -f builddir/meson-logs/testlog.json ]; then
    /usr/bin/python3 scripts/summarize-tests.py builddir/meson-logs/testlog.json
fi
exit $status
