#!/usr/bin/env bash
# Runs tokenrelay's identity sources against real third-party issuers, installed locally:
#   - oauth2-mock-server (npm) for oauth2 client credentials and the refresh token grant;
#   - moto_server (PyPI moto[server]) for AWS STS AssumeRoleWithWebIdentity, and, with boto3 /
#     botocore as the reference, the `aws` source's ~/.aws profiles (e2e/idp/aws-profiles.sh).
# Tools go to e2e/.tools/ (gitignored); nothing is installed globally. Both servers bind
# 127.0.0.1 on ephemeral ports. The checks are the #[ignore]d tests in
# crates/tokenrelay/tests/e2e_idp.rs, which read the server URLs from the environment.
# Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/../.."

OAUTH2_MOCK_SERVER_VERSION=8.2.3  # 9.x needs node 22; 8.2 runs on node ^20.19
# shellcheck source=e2e/lib.sh
source e2e/lib.sh # TOOLS, MOTO_VERSION, BOTO3_VERSION and ensure_moto (moto[server], boto3 in e2e/.tools/venv)
E2E_NAME=idp
mkdir -p "$TOOLS"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_http() { # url, name
  for _ in $(seq 1 100); do
    if curl -fsS -o /dev/null "$1" 2>/dev/null; then return 0; fi
    sleep 0.2
  done
  echo "e2e/idp: $2 did not come up at $1" >&2
  return 1
}

echo "== installing oauth2-mock-server@$OAUTH2_MOCK_SERVER_VERSION and moto[server]==$MOTO_VERSION into e2e/.tools"
if [ ! -x "$TOOLS/node_modules/.bin/oauth2-mock-server" ] ||
   ! grep -q "\"version\": \"$OAUTH2_MOCK_SERVER_VERSION\"" "$TOOLS/node_modules/oauth2-mock-server/package.json"; then
  npm install --prefix "$TOOLS" --no-save --no-audit --no-fund "oauth2-mock-server@$OAUTH2_MOCK_SERVER_VERSION" >/dev/null
fi
ensure_moto

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

OAUTH_PORT=$(free_port)
"$TOOLS/node_modules/.bin/oauth2-mock-server" -a 127.0.0.1 -p "$OAUTH_PORT" >"$TOOLS/oauth2-mock-server.log" 2>&1 &
PIDS+=($!)
STS_PORT=$(free_port)
"$TOOLS/venv/bin/moto_server" -H 127.0.0.1 -p "$STS_PORT" >"$TOOLS/moto.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$OAUTH_PORT/.well-known/openid-configuration" oauth2-mock-server
wait_http "http://127.0.0.1:$STS_PORT/moto-api/" moto_server

export TOKENRELAY_E2E_OAUTH_URL="http://127.0.0.1:$OAUTH_PORT"
export TOKENRELAY_E2E_STS_URL="http://127.0.0.1:$STS_PORT"
# the issuer the mock server puts in `iss` (it names itself "localhost")
TOKENRELAY_E2E_OAUTH_ISSUER=$(curl -fsS "$TOKENRELAY_E2E_OAUTH_URL/.well-known/openid-configuration" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["issuer"])')
export TOKENRELAY_E2E_OAUTH_ISSUER
echo "== oauth2-mock-server at $TOKENRELAY_E2E_OAUTH_URL, moto_server at $TOKENRELAY_E2E_STS_URL"
cargo test -p tokenrelay --test e2e_idp -- --ignored --nocapture --test-threads 1
echo "== kind = \"aws\" profiles against moto, with boto3 $BOTO3_VERSION as the reference, and through serve"
bash e2e/idp/aws-profiles.sh
echo "== e2e/idp: all checks passed"
