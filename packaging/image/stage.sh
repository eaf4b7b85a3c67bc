#!/usr/bin/env bash
# Lays out the image's filesystem under DIR/out: the binary in /usr/local/bin, the CA bundle,
# /etc/passwd and /etc/group with the non-root user tokenrelay (65532), an nsswitch.conf for
# the static binary's name lookups, and a world-writable sticky /tmp (the helper's cache goes
# to /tmp/tokenrelay, created 0700 by the user). DIR is what the Dockerfile's `build` stage
# stands for (`--build-context build=DIR`).
#
# Usage: packaging/image/stage.sh BINARY CA_BUNDLE DIR
set -euo pipefail
[[ $# -eq 3 ]] || {
    echo "usage: stage.sh BINARY CA_BUNDLE DIR" >&2
    exit 2
}
bin="$1" ca="$2" out="$3/out"
if readelf -l "$bin" | grep -q 'program interpreter'; then
    echo "stage.sh: $bin is dynamically linked (build it with RUSTFLAGS='-C target-feature=+crt-static' and --target)" >&2
    exit 1
fi
rm -rf "$out"
mkdir -p "$out/usr/local/bin" "$out/etc/ssl/certs" "$out/tmp"
install -m 755 "$bin" "$out/usr/local/bin/tokenrelay"
install -m 644 "$ca" "$out/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/root:/sbin/nologin\ntokenrelay:x:65532:65532:tokenrelay:/tmp:/sbin/nologin\n' >"$out/etc/passwd"
printf 'root:x:0:\ntokenrelay:x:65532:\n' >"$out/etc/group"
printf 'hosts: files dns\n' >"$out/etc/nsswitch.conf"
chmod 644 "$out/etc/passwd" "$out/etc/group" "$out/etc/nsswitch.conf"
chmod 1777 "$out/tmp"
