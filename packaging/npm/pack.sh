#!/usr/bin/env bash
# Builds the npm packages: `platform` packs @tokenrelay/<platform>-<arch> around a tokenrelay
# binary (the binary alone, with "os" and "cpu" so npm installs only the matching one); `main`
# packs `tokenrelay` (launcher, providers, types; its optionalDependencies name the four
# platform packages). Writes the .tgz to OUTDIR and prints its name.
#
# Usage: packaging/npm/pack.sh platform BINARY PLATFORM ARCH OUTDIR
#        packaging/npm/pack.sh main OUTDIR
#   PLATFORM/ARCH as Node names them: linux x64, linux arm64, darwin x64, darwin arm64.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
usage() {
    echo "usage: pack.sh platform BINARY PLATFORM ARCH OUTDIR | pack.sh main OUTDIR" >&2
    exit 2
}
mode="${1:-}"
case "$mode" in
    platform)
        [[ $# -eq 5 ]] || usage
        bin="$2" platform="$3" arch="$4" out="$5"
        [[ -x "$bin" ]] || {
            echo "pack.sh: $bin is not an executable" >&2
            exit 2
        }
        ;;
    main)
        [[ $# -eq 2 ]] || usage
        out="$2"
        ;;
    *) usage ;;
esac
version="$(node -p 'require(process.argv[1]).version' "$here/tokenrelay/package.json")"
cargo_version="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$root/Cargo.toml" | head -1)"
[[ "$version" == "$cargo_version" ]] || {
    echo "pack.sh: packaging/npm/tokenrelay/package.json has $version, Cargo.toml $cargo_version" >&2
    exit 2
}
mkdir -p "$out"
out="$(cd "$out" && pwd)"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT

if [[ "$mode" == "main" ]]; then
    m="$stage/main"
    cp -r "$here/tokenrelay" "$m"
    cp "$root/LICENSE-MIT" "$root/LICENSE-APACHE" "$m/"
    (cd "$out" && npm pack --silent "$m")
    exit 0
fi

p="$stage/$platform-$arch"
mkdir -p "$p/bin"
cp "$bin" "$p/bin/tokenrelay"
chmod 755 "$p/bin/tokenrelay"
cp "$root/LICENSE-MIT" "$root/LICENSE-APACHE" "$p/"
cat >"$p/package.json" <<JSON
{
  "name": "@tokenrelay/$platform-$arch",
  "version": "$version",
  "description": "The tokenrelay binary for $platform-$arch (installed by the tokenrelay package).",
  "license": "MIT OR Apache-2.0",
  "repository": { "type": "git", "url": "git+https://github.com/tokenrelay/tokenrelay.git" },
  "os": ["$platform"],
  "cpu": ["$arch"],
  "files": ["bin/tokenrelay", "LICENSE-MIT", "LICENSE-APACHE"],
  "preferUnplugged": true
}
JSON
printf '# @tokenrelay/%s-%s\n\nThe `tokenrelay` binary for %s-%s. Install `tokenrelay` instead; it depends on this.\n' \
    "$platform" "$arch" "$platform" "$arch" >"$p/README.md"
(cd "$out" && npm pack --silent "$p")
