#!/usr/bin/env bash
# Builds libaccel and installs it under PREFIX (default /usr/local): the shared and static
# libraries, include/accel.h, and a pkg-config file, so `pkg-config --cflags --libs accel` works.
set -euo pipefail
prefix="${1:-/usr/local}"
here="$(cd "$(dirname "$0")" && pwd)"
root="$here/../.."
cargo build --release --manifest-path "$root/Cargo.toml" -p accel-capi
version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -1)"
install -d "$prefix/lib/pkgconfig" "$prefix/include"
install -m 0755 "$root/target/release/libaccel.so" "$prefix/lib/"
install -m 0644 "$root/target/release/libaccel.a" "$prefix/lib/"
install -m 0644 "$here/include/accel.h" "$prefix/include/"
sed -e "s|@PREFIX@|$prefix|" -e "s|@LIBDIR@|$prefix/lib|" -e "s|@INCLUDEDIR@|$prefix/include|" \
    -e "s|@VERSION@|$version|" "$here/accel.pc.in" > "$prefix/lib/pkgconfig/accel.pc"
echo "installed libaccel $version under $prefix"
