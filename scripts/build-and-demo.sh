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

demo() {
    echo
    echo "== $1"
    shift
    echo "gst-launch-1.0 -m $*"
    # Show the counters each memkit element posts on EOS.
    G_DEBUG=fatal_warnings gst-launch-1.0 -m "$@" 2>&1 | sed -n 's/^Got message #[0-9]* from element "\([a-z]*[0-9]*\)" (element): /  \1: /p'
}
demo "videotestsrc allocates AlignedMemory through memalign's proposal: nothing copied" \
    videotestsrc num-buffers=60 ! video/x-raw,format=I420,width=1280,height=720 ! \
    memalign alignment=4096 ! memcheck alignment=4096 memory-type=AlignedMemory fail-on-violation=true ! fakesink
demo "fakesrc ignores the ALLOCATION query: memalign copies each buffer once" \
    fakesrc num-buffers=100 sizetype=fixed sizemax=1000 ! memalign alignment=64 padding=64 ! \
    memcheck alignment=64 fail-on-violation=true ! fakesink
demo "slice into 4 KiB shares and merge them back without copying" \
    memsrc num-buffers=100 blocksize=65536 ! memslice chunk-size=4096 ! memmerge target-size=65536 ! \
    memcheck memory-type=AlignedMemory fail-on-violation=true ! fakesink

echo
echo "== the memkit tracer audits a stock pipeline (GST_TRACERS=memkittracer)"
echo "gst-launch-1.0 -q videotestsrc num-buffers=100 ! videoconvert ! fakesink"
G_DEBUG=fatal_warnings GST_TRACERS=memkittracer gst-launch-1.0 -q videotestsrc num-buffers=100 ! videoconvert ! fakesink

echo
echo "== two processes: frames travel as memfd descriptors, nothing copied"
sock="${TMPDIR:-/tmp}/memkit-demo-$$.sock"
echo "gst-launch-1.0 -m videotestsrc num-buffers=100 ! memalign allocator=MemfdMemory ! memfdsink on-full=wait socket-path=$sock &"
echo "gst-launch-1.0 -m memfdsrc socket-path=$sock ! videoconvert ! fakesink"
G_DEBUG=fatal_warnings gst-launch-1.0 -m videotestsrc num-buffers=100 ! video/x-raw,format=I420,width=640,height=480 ! \
    memalign allocator=MemfdMemory ! memfdsink on-full=wait socket-path="$sock" 2>&1 \
    | sed -n 's/^Got message #[0-9]* from element "\([a-z]*[0-9]*\)" (element): /  producer \1: /p' &
producer=$!
G_DEBUG=fatal_warnings gst-launch-1.0 -m memfdsrc socket-path="$sock" ! videoconvert ! fakesink 2>&1 \
    | sed -n 's/^Got message #[0-9]* from element "\([a-z]*[0-9]*\)" (element): /  consumer \1: /p'
wait $producer

echo
echo "The plugin is builddir/libgstmemkit.so; use it with GST_PLUGIN_PATH=$PWD/builddir"
