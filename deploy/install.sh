#!/usr/bin/env bash
# Installs carve with its shim, in the layout carve finds the shim by itself:
#
#   PREFIX/bin/carve
#   PREFIX/lib/carve/libcarve_shim.so     (preloaded by `carve run` and handed out by the agent)
#
# Usage: deploy/install.sh [--profile release|debug|NAME] [PREFIX]      (PREFIX: /usr/local)
#
# Builds carve-cli and carve-shim with cargo (release by default; progress shown), from the
# repository this script is in, into $CARGO_TARGET_DIR or its target/. The systemd unit
# (deploy/systemd/carve-apply-boot.service) and the container image
# (deploy/container/Containerfile) use this layout.
set -euo pipefail

profile=release
prefix=/usr/local
while [ $# -gt 0 ]; do
    case "$1" in
        --profile) profile="${2:?--profile needs a name}"; shift 2 ;;
        --profile=*) profile="${1#--profile=}"; shift ;;
        -h|--help) sed -n '2,/^set /p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
        *) prefix="$1"; shift ;;
    esac
done

root="$(cd "$(dirname "$0")/.." && pwd)"
cargo="${CARGO:-cargo}"
case "$profile" in
    release) flags=(--release); dir=release ;;
    debug|dev) flags=(); dir=debug ;;
    *) flags=(--profile "$profile"); dir="$profile" ;;
esac
target="${CARGO_TARGET_DIR:-$root/target}"

echo "install.sh: building carve and its shim ($profile)" >&2
(cd "$root" && "$cargo" build "${flags[@]}" --locked -p carve-cli -p carve-shim)

built="$target/$dir"
for f in carve libcarve_shim.so; do
    [ -f "$built/$f" ] || { echo "install.sh: $built/$f was not built" >&2; exit 3; }
done
install -d "$prefix/bin" "$prefix/lib/carve"
install -m 0755 "$built/carve" "$prefix/bin/carve"
install -m 0644 "$built/libcarve_shim.so" "$prefix/lib/carve/libcarve_shim.so"
echo "install.sh: installed $prefix/bin/carve and $prefix/lib/carve/libcarve_shim.so" >&2
