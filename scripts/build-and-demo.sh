#!/bin/sh
# Command 1 of the README: install what is missing, build the plugin, run the demonstration.
set -eu
cd "$(dirname "$0")/.."
./scripts/install-deps.sh

if [ ! -f builddir/build.ninja ]; then
    meson setup builddir
fi
meson compile -C builddir

export GST_PLUGIN_PATH="$PWD/builddir"
export GST_REGISTRY="$PWD/builddir/demo-registry.bin"
echo
echo "== gst-inspect-1.0 memkit"
G_DEBUG=fatal_warnings gst-inspect-1.0 memkit
echo "== AlignedMemory next to SystemMemory (scripts/demo.py, through GObject introspection)"
G_DEBUG=fatal_warnings /usr/bin/python3 scripts/demo.py
echo
echo "The plugin is builddir/libgstmemkit.so; use it with GST_PLUGIN_PATH=$PWD/builddir"
