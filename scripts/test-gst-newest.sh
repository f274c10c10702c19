#!/bin/sh
# The 1.28 stage: builds GStreamer 1.28 (core, a minimal gst-plugins-base, and the unixfd
# plugin) from a source tarball into .gst-newest/ in the checkout (ignored by git, reused when
# present), builds memkit against it with its own cargo target directory, and runs every test
# suite against it: Rust, C gst-check (also under valgrind), Python GI (Debian's typelibs of
# 1.22 over 1.28's libraries, which keep their ABI) and the gst-launch-1.0 tests.
#
# Usage: scripts/test-gst-newest.sh [TARBALL]
#   TARBALL defaults to ../shared/vendor/gstreamer-1.28.6-core-base-unixfd.tar.xz; without it
#   the stage is skipped (exit 0) with a message, so a clone without ../shared still works.
# Environment: MEMKIT_NEWEST_ONLY_BUILD=1 builds GStreamer and memkit and runs nothing else.
set -eu
cd "$(dirname "$0")/.."
root=$PWD
tarball=${1:-$root/../shared/vendor/gstreamer-1.28.6-core-base-unixfd.tar.xz}
if [ ! -f "$tarball" ]; then
    echo "memkit: no GStreamer sources at $tarball: the newest-GStreamer stage is skipped."
    echo "memkit: pass the path of gstreamer-<version>-core-base-unixfd.tar.xz to run it."
    exit 0
fi
start=$(date +%s)
work=$root/.gst-newest
prefix=$work/prefix
mkdir -p "$work"

# Build tools: flex and bison from Debian, meson >= 1.4 from PyPI (Debian 12 has 1.0).
missing=""
for p in flex bison python3-venv; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    if [ "$(id -u)" -eq 0 ]; then
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing
    else
        echo "memkit: the newest-GStreamer stage needs:$missing (sudo apt-get install$missing)" >&2
        exit 1
    fi
fi
if [ ! -x "$work/venv/bin/meson" ]; then
    /usr/bin/python3 -m venv "$work/venv"
    "$work/venv/bin/pip" install -q "meson>=1.4,<2" ninja
fi
meson=$work/venv/bin/meson
export PATH="$work/venv/bin:$PATH"

# GStreamer itself, once per tarball (a stamp names the tarball it was built from).
stamp=$work/built-from
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$(basename "$tarball")" ]; then
    echo "== building GStreamer from $(basename "$tarball") into $prefix"
    rm -rf "$work/src" "$work/build-core" "$work/build-base" "$work/build-unixfd" "$prefix"
    mkdir -p "$work/src"
    tar -xf "$tarball" -C "$work/src"
    src=$(find "$work/src" -mindepth 1 -maxdepth 1 -type d | head -n 1)
    "$meson" setup "$work/build-core" "$src/subprojects/gstreamer" --prefix="$prefix" \
        --libdir=lib --buildtype=release -Dexamples=disabled -Dtests=disabled \
        -Dbenchmarks=disabled -Dintrospection=disabled -Ddoc=disabled -Dnls=disabled \
        -Dbash-completion=disabled -Dlibunwind=disabled -Dlibdw=disabled -Dptp-helper=disabled \
        -Dcheck=enabled >/dev/null
    ninja -C "$work/build-core" install >/dev/null
    PKG_CONFIG_PATH=$prefix/lib/pkgconfig "$meson" setup "$work/build-base" \
        "$src/subprojects/gst-plugins-base" --prefix="$prefix" --libdir=lib --buildtype=release \
        -Dauto_features=disabled -Dexamples=disabled -Dtests=disabled -Dintrospection=disabled \
        -Ddoc=disabled -Dnls=disabled -Dtools=enabled -Dapp=enabled -Dvideotestsrc=enabled \
        -Dvideoconvertscale=enabled -Daudiotestsrc=enabled -Daudioconvert=enabled \
        -Dorc=disabled >/dev/null
    ninja -C "$work/build-base" install >/dev/null
    # unixfdsink/unixfdsrc: gst-plugins-bad's seven files, built as a small plugin of their own.
    PKG_CONFIG_PATH=$prefix/lib/pkgconfig "$meson" setup "$work/build-unixfd" \
        "$root/scripts/unixfd" -Dsrcdir="$src/subprojects/gst-plugins-bad/gst/unixfd" \
        --prefix="$prefix" --libdir=lib --buildtype=release >/dev/null
    ninja -C "$work/build-unixfd" install >/dev/null
    basename "$tarball" >"$stamp"
fi
export PKG_CONFIG_PATH=$prefix/lib/pkgconfig
export LD_LIBRARY_PATH=$prefix/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export PATH=$prefix/bin:$PATH
export GST_PLUGIN_SYSTEM_PATH=$prefix/lib/gstreamer-1.0
echo "== GStreamer $(gst-launch-1.0 --gst-version | sed -n 's/.*version //p') in $prefix ($(($(date +%s) - start)) s so far)"
export CARGO_TARGET_DIR=$work/target
build=$work/build-memkit
if [ ! -f "$build/build.ninja" ]; then
    "$meson" setup "$build" "$root" >/dev/null
fi
ninja -C "$build" >/dev/null
echo "== memkit built against $(pkg-config --modversion gstreamer-1.0) ($(($(date +%s) - start)) s so far)"
[ "${MEMKIT_NEWEST_ONLY_BUILD:-0}" = 1 ] && exit 0

status=0
"$meson" test -C "$build" --print-errorlogs --num-processes 2 --no-rebuild || status=$?
if [ -f "$build/meson-logs/testlog.json" ]; then
    /usr/bin/python3 scripts/summarize-tests.py "$build/meson-logs/testlog.json" | sed 's/^tests:/tests-newest:/'
fi
echo "== the newest-GStreamer stage took $(($(date +%s) - start)) s"
exit $status
