#!/bin/sh
# Installs what memkit needs on Debian 12 (bookworm), if it is missing, and checks the Rust
# toolchain. Run as root to install; otherwise it prints the command to run.
set -eu

PACKAGES="libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev gstreamer1.0-tools gir1.2-gst-plugins-base-1.0
gstreamer1.0-plugins-base gstreamer1.0-plugins-good python3-gst-1.0 python3-gi
meson ninja-build pkg-config gcc valgrind gstreamer1.0-plugins-bad"

missing=""
for p in $PACKAGES; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done

if [ -n "$missing" ]; then
    if [ "$(id -u)" -eq 0 ]; then
        echo "memkit: installing Debian packages:$missing"
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing
    else
        echo "memkit: missing Debian packages:$missing" >&2
        echo "run: sudo apt-get install$missing" >&2
        exit 1
    fi
fi

if ! command -v cargo >/dev/null 2>&1; then
    echo "memkit: cargo not found. memkit needs Rust >= 1.92 (Debian 12's rustc is too old):" >&2
    echo "install it with rustup (https://rustup.rs) and run this again." >&2
    exit 1
fi
rustv=$(rustc --version | sed -n 's/^rustc \([0-9]*\)\.\([0-9]*\).*/\1 \2/p')
set -- $rustv
if [ "${1:-0}" -lt 1 ] || { [ "$1" -eq 1 ] && [ "${2:-0}" -lt 92 ]; }; then
    echo "memkit: rustc $1.$2 is too old, memkit needs >= 1.92 (rustup update)" >&2
    exit 1
fi
