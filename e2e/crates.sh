#!/usr/bin/env bash
# `cargo package --workspace` (without the verify build, which CI's test run already covers):
# both .crate files build, and each holds its Cargo.toml with the metadata crates.io shows
# (description, licence, repository, readme, keywords, categories), the README and both licence
# texts (real files, not links), and nothing outside its include list (no e2e, bench, target).
set -euo pipefail
# shellcheck source=e2e/lib.sh
source "$(dirname "$0")/lib.sh"
e2e_init crates
cd "$ROOT"
timeout 300 cargo package --workspace --no-verify --locked --allow-dirty --target-dir "$WORK/target" \
    >"$WORK/package.log" 2>&1 || fail "cargo package: $(tail -10 "$WORK/package.log")"
version="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)"
files=0
for crate in tokenrelay tokenrelay-cli; do
    f="$WORK/target/package/$crate-$version.crate"
    [[ -f "$f" ]] || fail "no $f"
    list="$(tar tzf "$f")"
    for want in Cargo.toml README.md LICENSE-MIT LICENSE-APACHE src/; do
        grep -q "^$crate-$version/$want" <<<"$list" || fail "$crate: no $want in the .crate"
    done
    if grep -qE "^$crate-$version/(e2e|bench|target|packaging)/" <<<"$list"; then
        fail "$crate: the .crate holds files outside its include list"
    fi
    for lic in LICENSE-MIT LICENSE-APACHE README.md; do
        tar tvzf "$f" "$crate-$version/$lic" | grep -q '^-' || fail "$crate: $lic is not a regular file"
    done
    manifest="$(tar xzOf "$f" "$crate-$version/Cargo.toml")"
    for key in description license repository readme keywords categories; do
        grep -q "^$key = " <<<"$manifest" || fail "$crate: no $key in its Cargo.toml"
    done
    files=$((files + $(wc -l <<<"$list")))
done
tar xzOf "$WORK/target/package/tokenrelay-cli-$version.crate" "tokenrelay-cli-$version/Cargo.toml" |
    grep -A2 '^\[dependencies.tokenrelay\]' | grep -q "^version = \"$version\"" ||
    fail "tokenrelay-cli does not depend on the library by version"
summary "cargo package --workspace: tokenrelay and tokenrelay-cli $version ($files files), metadata, README, both licence texts; the CLI depends on tokenrelay = $version"
