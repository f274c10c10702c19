#!/bin/sh
# Runs a command in the environment of the GStreamer that scripts/test-gst-newest.sh built
# into .gst-newest/ (its libraries, tools and plugins, unixfd included, and memkit built
# against it), e.g.:
#   scripts/gst-newest-env.sh gst-inspect-1.0 memkit
#   scripts/gst-newest-env.sh /usr/bin/python3 scripts/bench_crossprocess.py --against unixfd
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
prefix=$root/.gst-newest/prefix
if [ ! -x "$prefix/bin/gst-launch-1.0" ]; then
    echo "memkit: no GStreamer in $prefix: run scripts/test-gst-newest.sh first" >&2
    exit 1
fi
export PKG_CONFIG_PATH=$prefix/lib/pkgconfig
export LD_LIBRARY_PATH=$prefix/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export PATH=$prefix/bin:$PATH
export GST_PLUGIN_SYSTEM_PATH=$prefix/lib/gstreamer-1.0
export GST_PLUGIN_PATH=$root/.gst-newest/build-memkit
export GST_REGISTRY=$root/.gst-newest/registry.bin
exec "$@"
