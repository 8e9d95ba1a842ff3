#!/usr/bin/env bash
# Release binaries, in one command on a fresh Debian machine (as root, or with the tools already
# installed):
#   ci/dist.sh            # writes target/dist/deaddrop-<version>-<target>[.exe] and SHA256SUMS
# Targets: x86-64 and ARM64 Linux (static musl: run on any distribution, Termux on Android and
# a Raspberry Pi), and x86-64 Windows. Built with zig (ziglang from PyPI, via cargo-zigbuild) as
# the C compiler and linker for musl, and mingw-w64 for Windows.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v x86_64-w64-mingw32-gcc >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq mingw-w64 >/dev/null
fi
rustup target add x86_64-unknown-linux-musl aarch64-unknown-linux-musl x86_64-pc-windows-gnu \
    >/dev/null 2>&1
python3 -c "import ziglang" 2>/dev/null || python3 -m pip install --quiet ziglang \
    || python3 -m pip install --quiet --break-system-packages ziglang
command -v cargo-zigbuild >/dev/null 2>&1 || cargo install --quiet --locked cargo-zigbuild --version 0.24.1

version=$(cargo metadata --no-deps --format-version 1 \
    | python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"]=="deaddrop"))')
out=target/dist
rm -rf "$out"
mkdir -p "$out"
for t in x86_64-unknown-linux-musl aarch64-unknown-linux-musl; do
    echo "dist: $t"
    cargo zigbuild --locked --release --target "$t" --bin deaddrop
    cp "target/$t/release/deaddrop" "$out/deaddrop-$version-$t"
done
echo "dist: x86_64-pc-windows-gnu"
cargo build --locked --release --target x86_64-pc-windows-gnu --bin deaddrop
cp target/x86_64-pc-windows-gnu/release/deaddrop.exe "$out/deaddrop-$version-x86_64-pc-windows-gnu.exe"
(cd "$out" && sha256sum deaddrop-* > SHA256SUMS && cat SHA256SUMS)
ls -l "$out"
