#!/usr/bin/env bash
# The cross-platform check, called by .ci/run (and runnable by hand, as root on Debian):
#   - Windows x86-64 (mingw-w64): built, then a message, a file and a folder exchanged with the
#     Linux build on loopback, both ways, with the .exe running under Wine;
#   - Linux ARM64, static musl (the binary for Termux and a Raspberry Pi): built with zig as the
#     C compiler and linker, and the same exchange run under qemu-user;
#   - macOS ARM64: compiled and linted with zig as the C compiler, without the final link (that
#     needs Apple's SDK);
#   - Windows: linted (clippy, while it is built), so code behind cfg(windows) is checked too.
# Installs what is missing: mingw-w64, wine, qemu-user-static (Debian), the rustup targets,
# zig (the ziglang package from PyPI) and cargo-zigbuild (its prebuilt release from PyPI).
# Every packet stays on loopback: each side is confined with --interface 127.0.0.1 and a
# private port.
set -euo pipefail
cd "$(dirname "$0")/../.."

need_apt=()
command -v x86_64-w64-mingw32-gcc >/dev/null 2>&1 || need_apt+=(mingw-w64)
command -v wine >/dev/null 2>&1 || need_apt+=(wine wine64)
command -v qemu-aarch64-static >/dev/null 2>&1 || need_apt+=(qemu-user-static)
if [ ${#need_apt[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
rustup target add x86_64-pc-windows-gnu aarch64-unknown-linux-musl aarch64-apple-darwin >/dev/null 2>&1
python3 -c "import ziglang" 2>/dev/null || python3 -m pip install --quiet ziglang \
    || python3 -m pip install --quiet --break-system-packages ziglang
# The prebuilt cargo-zigbuild from PyPI (the same release as on crates.io): minutes less than
# compiling it with `cargo install` on two cores.
command -v cargo-zigbuild >/dev/null 2>&1 || python3 -m pip install --quiet cargo-zigbuild==0.24.1 \
    || python3 -m pip install --quiet --break-system-packages cargo-zigbuild==0.24.1
# pip's scripts folder, where cargo finds the `zigbuild` subcommand (pyenv may not have a shim).
PATH="$PATH:$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"

# Every build below lints this crate's code as it compiles it (clippy's driver, -D warnings),
# as .ci/run's test build does (so the native build below finds that one fresh): the Windows
# build is its lint, without checking every dependency again. Set after the installs above.
RUSTC_WORKSPACE_WRAPPER="$(command -v clippy-driver)"
export RUSTC_WORKSPACE_WRAPPER CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"

# How long each part takes, in CI's log (the whole run has a time budget).
step() { echo "cross: $1 (${SECONDS}s into the cross checks)"; }

native=target/debug/deaddrop
cargo build --locked --quiet --bin deaddrop

step "Windows x86-64 (mingw-w64), linted and built, run under Wine"
# Dependencies stay optimised (the dev profile's): iroh and iroh-relay also build as cdylibs,
# and unoptimised their DLLs export more than the 65,535 symbols a PE file can name.
cargo build --locked --quiet --target x86_64-pc-windows-gnu --bin deaddrop
win=target/x86_64-pc-windows-gnu/debug
step "Windows built"
# Wine 8 (Debian 12) lacks ProcessPrng, which Rust's std imports: a test-only shim supplies it.
x86_64-w64-mingw32-gcc -shared -O2 -o "$win/bcryptprimitives.dll" ci/cross/processprng.c -ladvapi32
export WINEPREFIX="$PWD/target/wine-prefix" WINEDEBUG=-all WINEDLLOVERRIDES="bcryptprimitives=n,b"
wineboot --init >/dev/null 2>&1 || true
python3 ci/cross/exchange.py --a "$native" --b "wine $win/deaddrop.exe" --label windows-x86_64 --b-under-wine
# Without a passphrase and without a console, it says so (usage error) rather than hang.
set +e
env -u DEADDROP_ROOM wine "$win/deaddrop.exe" list --interface 127.0.0.1 --port 9 \
    </dev/null >/dev/null 2>target/wine-noroom.txt
rc=$?
set -e
if [ "$rc" -ne 2 ] || ! grep -q DEADDROP_ROOM target/wine-noroom.txt; then
    echo "cross: windows without a passphrase and a console: exit $rc"; cat target/wine-noroom.txt
    exit 1
fi

step "Linux ARM64, static musl (zig), run under qemu-user"
# Dependencies unoptimised but for the crypto crates (this static build has no DLLs, so no
# export limit): minutes less to compile, and a 3 MB exchange is quick enough under qemu.
unoptimised=(--config 'profile.dev.package."*".opt-level=0')
for c in ring blake3 curve25519-dalek sha2; do
    unoptimised+=(--config "profile.dev.package.$c.opt-level=3")
done
cargo zigbuild --locked --quiet --target aarch64-unknown-linux-musl --bin deaddrop "${unoptimised[@]}"
step "Linux ARM64 built"
python3 ci/cross/exchange.py --a "$native" \
    --b "qemu-aarch64-static target/aarch64-unknown-linux-musl/debug/deaddrop" --label linux-arm64-musl

# One macOS target is enough: the code behind cfg(target_os = "macos") is the same on both
# architectures, and each lint of the dependency tree costs minutes.
step "macOS ARM64, compiled and linted (zig as the C compiler; no final link)"
cargo-zigbuild clippy --locked --quiet --target aarch64-apple-darwin --lib --bins -- -D warnings
step "all checks passed"
