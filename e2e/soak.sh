#!/usr/bin/env bash
# The soak (issue #13): `tokenrelay serve` with 2-second tokens from a fake OAuth2 IdP, in
# front of a fake upstream that checks every token (issued, unexpired, not revoked), under
# >= 200 requests/s of mixed JSON and SSE while faults run: a revocation every 6 s, IdP 5xx and
# 429 bursts shorter than a token's remaining life, upstream connections reset between
# requests, clients that vanish mid-stream. Reports requests, client-visible failures (must be
# 0), acquisitions, tokenrelay's RSS at start and end. See docs/faults.md.
#
# Usage: bash e2e/soak.sh [SECONDS]     (default 600; .ci/run runs 30)
#   SOAK_RATE=N     requests per second (default 250; below 80% of it is a failure)
#   TOKENRELAY_BIN=path, E2E_KEEP=1 as for the other e2e scripts
set -euo pipefail
# shellcheck source=e2e/lib.sh
source "$(dirname "$0")/lib.sh"
e2e_init soak
command -v python3 >/dev/null || fail "python3 is not installed"
seconds="${1:-600}"
[[ "$seconds" =~ ^[0-9]+$ && "$seconds" -ge 5 ]] || fail "SECONDS must be a whole number >= 5, got $seconds"
ulimit -n 8192 2>/dev/null || true
timeout -k 5 $((seconds + 60)) python3 "$FIX/soak.py" --bin "$TOKENRELAY" --work "$WORK" \
    --seconds "$seconds" --rate "${SOAK_RATE:-250}"
