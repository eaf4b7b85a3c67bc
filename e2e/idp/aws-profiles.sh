#!/usr/bin/env bash
# `kind = "aws"` with ~/.aws profiles against moto_server, checked against boto3/botocore (see
# e2e/idp/aws_profiles.py). Called by e2e/idp/run.sh with TOKENRELAY_E2E_STS_URL set and boto3
# in e2e/.tools/venv; standalone: start moto_server and set TOKENRELAY_E2E_STS_URL yourself.
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${TOKENRELAY_E2E_STS_URL:?set TOKENRELAY_E2E_STS_URL (run e2e/idp/run.sh)}"
BIN="${TOKENRELAY_BIN:-$PWD/target/debug/tokenrelay}"
if [ -z "${TOKENRELAY_BIN:-}" ]; then
  cargo build -q -p tokenrelay-cli
fi
WORK="$(mktemp -d "${TMPDIR:-/tmp}/tokenrelay-e2e-aws-profiles.XXXXXX")"
keep() { local code=$?; if [ $code -ne 0 ]; then echo "e2e/idp aws profiles: logs kept in $WORK" >&2; else rm -rf "$WORK"; fi; exit $code; }
trap keep EXIT
timeout 300 e2e/.tools/venv/bin/python e2e/idp/aws_profiles.py --sts "$TOKENRELAY_E2E_STS_URL" --bin "$BIN" --work "$WORK"
