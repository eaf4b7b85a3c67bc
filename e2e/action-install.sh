#!/usr/bin/env bash
# The composite action's install step (.github/actions/tokenrelay/install.sh) against a release
# laid out as release.yml publishes it (packaging/release/archive.sh + SHA256SUMS), served on
# loopback: it downloads the archive of the runner's platform, checks it against SHA256SUMS and
# prints a binary that runs; a second call answers from the tool cache without downloading; a
# release whose SHA256SUMS does not match the archive, or that lacks the entry, fails the step.
set -euo pipefail
# shellcheck source=e2e/lib.sh
source "$(dirname "$0")/lib.sh"
e2e_init action-install
ACTION_DIR="$ROOT/.github/actions/tokenrelay"
version="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$ROOT/Cargo.toml" | head -1)"
target=x86_64-unknown-linux-gnu
[[ "$(uname -s)-$(uname -m)" == "Linux-x86_64" ]] || skip "runs on Linux x86_64 only"

# Three releases: good, tampered (SHA256SUMS of other bytes), and one without the entry.
rel="$WORK/releases"
for v in "$version" 9.9.1 9.9.2; do
    mkdir -p "$rel/v$v"
    bash "$ROOT/packaging/release/archive.sh" "$TOKENRELAY" "$target" "$v" "$rel/v$v" >/dev/null
    (cd "$rel/v$v" && sha256sum tokenrelay-*.tar.gz >SHA256SUMS)
done
sed -i 's/^\(.\)/0\1/; s/^\(.\{64\}\)./\1/' "$rel/v9.9.1/SHA256SUMS"
: >"$rel/v9.9.2/SHA256SUMS"
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
python3 -m http.server --bind 127.0.0.1 --directory "$rel" "$port" >"$WORK/http.log" 2>&1 &
PIDS+=($!)
server_pid=$!
wait_http "http://127.0.0.1:$port/"

install() {
    env -u INPUT_TOKENRELAY GITHUB_ACTION_PATH="$ACTION_DIR" RUNNER_OS=Linux RUNNER_ARCH=X64 \
        RUNNER_TOOL_CACHE="$WORK/toolcache" INPUT_BUILD=false INPUT_VERSION="$1" \
        TOKENRELAY_RELEASE_BASE="http://127.0.0.1:$port/v${1:-$version}" \
        timeout 60 bash "$ACTION_DIR/install.sh"
}

bin="$(install "" 2>"$WORK/install.err")" || fail "install (default version) failed: $(cat "$WORK/install.err")"
[[ "$bin" == "$WORK/toolcache/tokenrelay/$version/$target/tokenrelay-$version-$target/tokenrelay" ]] ||
    fail "install printed $bin"
[[ "$("$bin" --version)" == "tokenrelay $version" ]] || fail "the installed binary says $("$bin" --version)"
grep -q "downloading" "$WORK/install.err" || fail "the first install did not download"
kill "$server_pid"
wait "$server_pid" 2>/dev/null || true
again="$(install "v$version" 2>"$WORK/again.err")" || fail "the cached install failed: $(cat "$WORK/again.err")"
[[ "$again" == "$bin" ]] && ! grep -q "downloading" "$WORK/again.err" || fail "the second install did not use the cache"

python3 -m http.server --bind 127.0.0.1 --directory "$rel" "$port" >"$WORK/http2.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$port/"
code=0
install 9.9.1 >/dev/null 2>"$WORK/bad.err" || code=$?
[[ $code -ne 0 ]] && grep -q "checksum mismatch" "$WORK/bad.err" || fail "a tampered release was accepted: $(cat "$WORK/bad.err")"
[[ ! -e "$WORK/toolcache/tokenrelay/9.9.1/$target/tokenrelay-9.9.1-$target" ]] || fail "a tampered archive was unpacked"
code=0
install 9.9.2 >/dev/null 2>"$WORK/missing.err" || code=$?
[[ $code -ne 0 ]] && grep -q "no entry" "$WORK/missing.err" || fail "a release without its checksum was accepted"
code=0
install "1.2" >/dev/null 2>"$WORK/ver.err" || code=$?
[[ $code -ne 0 ]] || fail "version 1.2 was accepted"
summary "composite action install: downloaded v$version, checked SHA256SUMS, ran it; cached on the second call; a tampered checksum, a missing entry and a malformed version each failed the step"
