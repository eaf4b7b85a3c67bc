#!/usr/bin/env bash
# The install step of the tokenrelay composite action: prints the path of the tokenrelay binary
# to run. In order:
#   INPUT_TOKENRELAY   a path given by the workflow: used as it is;
#   INPUT_BUILD=true   cargo build --release from the action's repository (needs Rust);
#   otherwise          the released binary of INPUT_VERSION (default: the version in the
#                      action's own Cargo.toml, so pinning the action pins the binary),
#                      downloaded from the repository's GitHub release with its SHA256SUMS and
#                      checked against it, cached under RUNNER_TOOL_CACHE. A checksum mismatch
#                      fails the step.
# TOKENRELAY_RELEASE_BASE overrides the download base URL (tests, mirrors).
set -euo pipefail

if [[ -n "${INPUT_TOKENRELAY:-}" ]]; then
    echo "$INPUT_TOKENRELAY"
    exit 0
fi
repo="$(cd "$GITHUB_ACTION_PATH/../../.." && pwd)"
if [[ "${INPUT_BUILD:-false}" == "true" ]]; then
    echo "tokenrelay: building from $repo" >&2
    cargo build --release --locked --quiet --manifest-path "$repo/Cargo.toml" -p tokenrelay-cli >&2
    echo "$repo/target/release/tokenrelay"
    exit 0
fi

version="${INPUT_VERSION:-}"
version="${version#v}"
if [[ -z "$version" ]]; then
    version="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$repo/Cargo.toml" | head -1)"
fi
[[ "$version" =~ ^[0-9]+\.[0-9]+\.[0-9]+([.+-][0-9A-Za-z.-]+)?$ ]] || {
    echo "::error::tokenrelay: version '$version' is not a release version (x.y.z)" >&2
    exit 1
}
case "${RUNNER_OS:-$(uname -s)}-${RUNNER_ARCH:-$(uname -m)}" in
    Linux-X64 | Linux-x86_64) target=x86_64-unknown-linux-gnu ;;
    Linux-ARM64 | Linux-aarch64) target=aarch64-unknown-linux-gnu ;;
    macOS-ARM64 | Darwin-arm64) target=aarch64-apple-darwin ;;
    macOS-X64 | Darwin-x86_64) target=x86_64-apple-darwin ;;
    *)
        echo "::error::tokenrelay: no released binary for ${RUNNER_OS:-?}-${RUNNER_ARCH:-?}; set build: true" >&2
        exit 1
        ;;
esac
name="tokenrelay-$version-$target"
cache="${RUNNER_TOOL_CACHE:-${RUNNER_TEMP:-${TMPDIR:-/tmp}}}/tokenrelay/$version/$target"
if [[ -x "$cache/$name/tokenrelay" ]]; then
    echo "$cache/$name/tokenrelay"
    exit 0
fi
base="${TOKENRELAY_RELEASE_BASE:-${GITHUB_SERVER_URL:-https://github.com}/${GITHUB_ACTION_REPOSITORY:-tokenrelay/tokenrelay}/releases/download/v$version}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
fetch() {
    curl -fsSL --retry 3 --max-time 120 -o "$2" "$1" || {
        echo "::error::tokenrelay: cannot download $1" >&2
        exit 1
    }
}
echo "tokenrelay: downloading $name from $base" >&2
fetch "$base/$name.tar.gz" "$tmp/$name.tar.gz"
fetch "$base/SHA256SUMS" "$tmp/SHA256SUMS"
want="$(awk -v f="$name.tar.gz" '$2 == f || $2 == "*" f { print $1 }' "$tmp/SHA256SUMS")"
[[ "$want" =~ ^[0-9a-f]{64}$ ]] || {
    echo "::error::tokenrelay: SHA256SUMS has no entry for $name.tar.gz" >&2
    exit 1
}
if command -v sha256sum >/dev/null; then
    got="$(sha256sum "$tmp/$name.tar.gz" | awk '{ print $1 }')"
else
    got="$(shasum -a 256 "$tmp/$name.tar.gz" | awk '{ print $1 }')"
fi
[[ "$got" == "$want" ]] || {
    echo "::error::tokenrelay: checksum mismatch for $name.tar.gz (expected $want, got $got)" >&2
    exit 1
}
mkdir -p "$cache"
tar -xzf "$tmp/$name.tar.gz" -C "$cache"
[[ -x "$cache/$name/tokenrelay" ]] || {
    echo "::error::tokenrelay: $name.tar.gz holds no $name/tokenrelay" >&2
    exit 1
}
echo "$cache/$name/tokenrelay"
