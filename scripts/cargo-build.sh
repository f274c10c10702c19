#!/bin/sh
# Builds the memkit plugin with cargo and copies it where meson expects it.
# Usage: cargo-build.sh SOURCE_DIR OUTPUT_FILE
set -eu
src=$1
out=$2
cargo build --release --locked --manifest-path "$src/Cargo.toml"
target=${CARGO_TARGET_DIR:-$src/target}
cp "$target/release/libgstmemkit.so" "$out"
