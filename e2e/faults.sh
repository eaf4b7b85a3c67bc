#!/usr/bin/env bash
# The fault matrix (issue #13): source, identity provider, upstream, client, browser, method/path
# and lifecycle faults against real `tokenrelay serve` processes and loopback fakes. Each fault
# must get its clear answer in bounded time, leave the same `serve` answering a good request,
# and put no secret byte in tokenrelay's debug logs or in anything a client received.
# The faults and their expected answers: docs/faults.md.
#
# Prints one line per fault (`ok NAME (Ns)` / `FAIL NAME: reason (Ns)`), then `N passed, M failed`;
# exits non-zero when any failed. Takes ~20 s; bounded at 4 minutes.
#
# Usage: bash e2e/faults.sh [FAULT...]   (names as printed; default: all)
#   TOKENRELAY_BIN=path  use that binary (default target/release/tokenrelay; not built here)
#   E2E_KEEP=1           keep the scratch directory (configs, serve logs)
set -euo pipefail
# shellcheck source=e2e/lib.sh
source "$(dirname "$0")/lib.sh"
e2e_init faults
command -v python3 >/dev/null || fail "python3 is not installed"
# the refresh-token fault makes a directory immutable (chattr +i) and clears it itself; if the
# run is cut short, clear it here so that the scratch directory can be removed
trap 'code=$?; chattr -i "$WORK/rt-dir" 2>/dev/null || true; (exit $code); e2e_cleanup' EXIT

# 2,000 idle connections: the client and tokenrelay (which inherits this) both need the files.
ulimit -n 8192 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
[[ $(ulimit -n) == unlimited || $(ulimit -n) -ge 4200 ]] ||
    note "ulimit -n is $(ulimit -n): the 2,000-connection fault will fail"

code=0
timeout -k 5 240 python3 "$FIX/faults.py" --bin "$TOKENRELAY" --work "$WORK" \
    --tls-dir "$ROOT/crates/tokenrelay/tests/fixtures/tls" "$@" || code=$?
[[ $code -ne 124 ]] || echo "FAIL faults: the suite ran over its 240 s bound"
exit "$code"
