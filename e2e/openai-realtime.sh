#!/usr/bin/env bash
# The OpenAI Python SDK's Realtime client (`openai[realtime]`, pinned in lib.sh) through
# `tokenrelay serve` to a loopback WebSocket upstream (e2e/fixtures/ws_upstream.py, on the
# `websockets` library) that checks the token at the handshake like the real services.
# OpenAI shape (Bearer), Azure shape (`api-key`, /openai/realtime?api-version=…&deployment=…),
# the browser shape (local key in the `openai-insecure-api-key.` subprotocol); one socket open
# across more than two 3-second token lifetimes; one revocation (of every token issued so
# far, at the next handshake), retried invisibly.
set -euo pipefail
# shellcheck source=e2e/lib.sh
source "$(dirname "$0")/lib.sh"
e2e_init openai-realtime
ensure_realtime_venv

LIFETIME=3
EXCHANGES=3
SPACING=3.5
start_ws_upstream "$LIFETIME"
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
export E2E_LOCAL_KEY="e2e-local-$RANDOM$RANDOM"
cat >"$WORK/tokenrelay.toml" <<TOML
listen = "127.0.0.1:$port"
local_key_env = "E2E_LOCAL_KEY"

[[provider]]
name = "openai"
upstream = "$WS_UPSTREAM"
inject = "bearer"
min_remaining = "1s"
[provider.source]
kind = "command"
command = "python3 $FIX/ws_upstream.py token $WS_UPSTREAM"

[[provider]]
name = "azure"
upstream = "$WS_UPSTREAM"
path_prefix = "/azure"
inject = "api-key"
min_remaining = "1s"
[provider.source]
kind = "command"
command = "python3 $FIX/ws_upstream.py token $WS_UPSTREAM"
TOML
"$TOKENRELAY" serve --config "$WORK/tokenrelay.toml" --log-level info 2>"$WORK/serve.log" &
PIDS+=($!)
PROXY="http://127.0.0.1:$port"
wait_http "$PROXY/healthz"

started=$SECONDS
timeout 120 "$TOOLS/venv-realtime/bin/python" "$FIX/realtime_client.py" "$PROXY" "$WS_UPSTREAM" \
    "$E2E_LOCAL_KEY" "$EXCHANGES" "$SPACING" >"$WORK/client.json" 2>"$WORK/client.err" ||
    fail "client failed: $(cat "$WORK/client.json") $(tail -c 1200 "$WORK/client.err")"
elapsed=$((SECONDS - started))
http get "$PROXY/status" "$E2E_LOCAL_KEY" >"$WORK/status.json"
http get "$PROXY/metrics" >"$WORK/metrics.txt"

exchanges="$(json "$WORK/client.json" 'd["exchanges"]')"
socket_s="$(json "$WORK/client.json" 'd["socket_s"]')"
subprotocol="$(json "$WORK/client.json" 'd["subprotocol"]')"
[[ "$exchanges" -eq $((EXCHANGES + 2)) ]] || fail "client completed $exchanges exchanges"
[[ "$subprotocol" == "realtime" ]] || fail "browser shape: subprotocol $subprotocol"
python3 -c "import sys; sys.exit(0 if float('$socket_s') > 2 * $LIFETIME else 1)" ||
    fail "the first socket was open ${socket_s}s, not across two ${LIFETIME}s lifetimes"
accepted="$(ws_stats 'd["accepted"]')"
rejected="$(ws_stats 'd["rejected"]')"
auth="$(ws_stats '",".join(d["auth"])')"
protocols="$(ws_stats 'json.dumps(d["protocols"])' 2>/dev/null || ws_stats 'd["protocols"]')"
[[ "$accepted" -eq 4 ]] || fail "upstream accepted $accepted handshakes, expected 4"
[[ "$auth" == "bearer,bearer,api-key,bearer" ]] || fail "upstream saw credentials $auth"
[[ "$protocols" != *insecure* ]] || fail "the local key subprotocol reached the upstream: $protocols"
[[ "$protocols" == *realtime* ]] || fail "the other subprotocols were not passed on: $protocols"
retries="$(json "$WORK/status.json" 'd["providers"][0]["retries"]')"
acq="$(json "$WORK/status.json" 'd["providers"][0]["acquisitions"]')"
# The revocation hits every token issued so far: the azure provider's too, unless it has
# refreshed since (its next handshake is then retried as well).
azure_retries="$(json "$WORK/status.json" 'd["providers"][1]["retries"]')"
[[ "$retries" -eq 1 ]] || fail "proxy retried $retries openai handshakes, expected 1"
[[ "$rejected" -eq $((1 + azure_retries)) ]] ||
    fail "upstream rejected $rejected handshakes, proxy retried 1 + $azure_retries (azure)"
c101="$(http metric "$WORK/metrics.txt" tokenrelay_responses_total status=101)"
c401="$(http metric "$WORK/metrics.txt" tokenrelay_responses_total status=401)"
[[ "$c101" -eq 4 && "$c401" -eq 0 ]] || fail "proxy answered $c101 handshakes with 101 and $c401 with 401"
grep -q '^tokenrelay_open_sockets{provider="openai"}' "$WORK/metrics.txt" || fail "no tokenrelay_open_sockets in /metrics"
grep -q '^tokenrelay_oldest_socket_age_seconds{provider="azure"}' "$WORK/metrics.txt" || fail "no tokenrelay_oldest_socket_age_seconds in /metrics"
summary "openai[realtime] $OPENAI_PY_VERSION + websockets $WEBSOCKETS_VERSION via tokenrelay serve: $exchanges exchanges (OpenAI, Azure api-key, browser subprotocol) in ${elapsed}s; one socket open ${socket_s}s across ${LIFETIME}s tokens; upstream rejected $rejected handshake(s) (revoked), proxy retried each, client saw no 401; $acq acquisitions (openai)"
