#!/usr/bin/env bash
# Packs one release archive, tokenrelay-VERSION-TARGET.tar.gz (the binary, README.md and both
# licence texts under tokenrelay-VERSION-TARGET/), into OUTDIR and prints its name. After all
# targets: `(cd OUTDIR && sha256sum tokenrelay-*.tar.gz > SHA256SUMS)`, which the composite
# action (.github/actions/tokenrelay/install.sh) checks downloads against.
#
# Usage: packaging/release/archive.sh BINARY TARGET VERSION OUTDIR
set -euo pipefail
[[ $# -eq 4 ]] || {
    echo "usage: archive.sh BINARY TARGET VERSION OUTDIR" >&2
    exit 2
}
root="$(cd "$(dirname "$0")/../.." && pwd)"
bin="$1" target="$2" version="$3" out="$4"
name="tokenrelay-$version-$target"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/$name" "$out"
install -m 755 "$bin" "$stage/$name/tokenrelay"
cp "$root/README.md" "$root/LICENSE-MIT" "$root/LICENSE-APACHE" "$stage/$name/"
tar -C "$stage" --owner=0 --group=0 --numeric-owner -czf "$out/$name.tar.gz" "$name"
echo "$name.tar.gz"
