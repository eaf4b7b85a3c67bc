#!/usr/bin/env bash
# The container image (Dockerfile): built with buildah from the statically linked binary of
# build_packages (the Dockerfile's `build` stage replaced by a local directory, since no base
# image can be pulled here; the runtime stage is FROM scratch), run with podman: `--version`,
# `demo --once` (the whole loop inside the container, loopback only), `token --token-env`
# (the helper's cache in /tmp/tokenrelay as the non-root user), and a config file mounted
# read-only whose https://localhost token_url resolves through /etc/hosts (connection refused,
# not a lookup failure). Checks the image: user 65532, exec-form entrypoint, one layer, no shell.
# Installs podman, buildah and runc from Debian when missing (crun, podman's default runtime,
# fails on setrlimit on these machines; runc works).
set -euo pipefail
# shellcheck source=e2e/lib.sh
source "$(dirname "$0")/lib.sh"
e2e_init image

missing=()
for tool in podman buildah runc; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if [[ ${#missing[@]} -gt 0 ]]; then
    [[ $(id -u) -eq 0 ]] || skip "needs ${missing[*]} (apt-get install podman buildah runc, as root)"
    note "apt-get install ${missing[*]}"
    { timeout 300 apt-get update -qq && DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq \
        podman buildah runc; } >"$WORK/apt.log" 2>&1 || fail "apt-get install failed: $(tail -5 "$WORK/apt.log")"
fi
build_packages

IMAGE="localhost/tokenrelay:e2e"
packaging/image/stage.sh "$STATIC_BIN" /etc/ssl/certs/ca-certificates.crt "$WORK/ctx" ||
    fail "packaging/image/stage.sh failed"
started=$SECONDS
timeout 300 buildah --isolation chroot bud --quiet --build-context build="$WORK/ctx" -t "$IMAGE" \
    -f "$ROOT/Dockerfile" "$ROOT" >"$WORK/bud.log" 2>&1 || fail "buildah bud failed: $(tail -5 "$WORK/bud.log")"
note "built $IMAGE in $((SECONDS - started))s"
run() {
    timeout 120 podman run --rm --runtime runc --cgroup-manager cgroupfs --ulimit nofile=1024:1024 \
        --ulimit nproc=1024:1024 --network none "$@"
}

inspect() { podman image inspect "$IMAGE" --format "$1"; }
[[ "$(inspect '{{.Config.User}}')" == "65532:65532" ]] || fail "image user $(inspect '{{.Config.User}}')"
[[ "$(inspect '{{json .Config.Entrypoint}}')" == '["tokenrelay"]' ]] || fail "entrypoint $(inspect '{{json .Config.Entrypoint}}')"
layers="$(inspect '{{len .RootFS.Layers}}')"
[[ "$layers" -eq 1 ]] || fail "the image has $layers layers, expected 1 (FROM scratch + one COPY)"
size_mb="$(( $(inspect '{{.Size}}') / 1000000 ))"
code=0
run --entrypoint /bin/sh "$IMAGE" -c true >/dev/null 2>&1 || code=$?
[[ $code -ne 0 ]] || fail "the image has a shell"

version="$(run "$IMAGE" --version)" || fail "tokenrelay --version in the container failed"
[[ "$version" == "tokenrelay $(sed -n 's/^version = "\(.*\)"$/\1/p' "$ROOT/Cargo.toml" | head -1)" ]] ||
    fail "--version said '$version'"
run "$IMAGE" demo --once >"$WORK/demo.log" 2>&1 || fail "demo --once in the container: $(tail -5 "$WORK/demo.log")"
grep -q "^demo ok" "$WORK/demo.log" || fail "demo in the container did not say ok"
tok="$(run -e E2E_TOK=e2e-secret "$IMAGE" token --token-env E2E_TOK)" || fail "token --token-env in the container failed"
[[ "$tok" == "e2e-secret" ]] || fail "token --token-env printed something else"

mkdir -p "$WORK/cfg"
cat >"$WORK/cfg/tokenrelay.toml" <<'TOML'
[[provider]]
name = "local"
[provider.source]
kind = "oauth2"
token_url = "https://localhost:9/token"
client_id = "e2e"
client_secret_env = "E2E_SECRET"
TOML
chmod 755 "$WORK/cfg"
chmod 644 "$WORK/cfg/tokenrelay.toml"
code=0
run -e E2E_SECRET=s -v "$WORK/cfg:/cfg:ro" "$IMAGE" token --config /cfg/tokenrelay.toml >/dev/null 2>"$WORK/resolve.err" || code=$?
[[ $code -eq 1 ]] && grep -q "Connection refused" "$WORK/resolve.err" ||
    fail "localhost did not resolve in the container (exit $code): $(cat "$WORK/resolve.err")"
podman rmi -f "$IMAGE" >/dev/null 2>&1 || true
summary "image FROM scratch (${size_mb} MB, 1 layer, user 65532, no shell, ENTRYPOINT [\"tokenrelay\"]): --version, demo --once, token --token-env and a mounted config ran under podman (runc, --network none)"
