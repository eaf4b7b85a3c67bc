#!/usr/bin/env bash
# A remote MCP server through `tokenrelay run`: the official MCP SDK (npm
# @modelcontextprotocol/sdk, pinned in lib.sh) on both ends, streamable HTTP. The server
# (e2e/node/mcp-server.mjs) demands a bearer token that lives 3 seconds and revokes every token
# once mid-run; the client (e2e/node/mcp-client.mjs) finds it at $TOKENRELAY_URL_TOOLS with the
# local key as its static header. Two sessions (SSE answers, JSON answers), each with tool calls
# across several token lifetimes, a GET notification stream and a DELETE at the end.
# Asserts: every tool call answered; the one 401 (on a POST) retried by tokenrelay; one GET
# stream per session, open across the rotations and delivering notifications to the end;
# Mcp-Session-Id carried (calls reach their session); both sessions deleted.
set -euo pipefail
# shellcheck source=e2e/lib.sh
source "$(dirname "$0")/lib.sh"
e2e_init mcp
command -v node >/dev/null || fail "node is not installed"
ensure_mcp

LIFETIME=3
CALLS=6
SPACING_MS=1500
mkdir -p "$WORK/mcp"
cp "$E2E_DIR/node/mcp-server.mjs" "$E2E_DIR/node/mcp-client.mjs" "$WORK/mcp/"
ln -s "$TOOLS/mcp/node_modules" "$WORK/mcp/node_modules"
node "$WORK/mcp/mcp-server.mjs" "$LIFETIME" >"$WORK/mcp-server.json" 2>"$WORK/mcp-server.log" &
PIDS+=($!)
for ((i = 0; i < 100; i++)); do
    [[ -s "$WORK/mcp-server.json" ]] && break
    sleep 0.1
done
[[ -s "$WORK/mcp-server.json" ]] || fail "the MCP server did not start: $(head -c 500 "$WORK/mcp-server.log")"
MCP_UP="$(json "$WORK/mcp-server.json" 'd["url"]')"

cat >"$WORK/tokenrelay.toml" <<TOML
[[provider]]
name = "tools"
upstream = "$MCP_UP"
path_prefix = "/tools"
inject = "bearer"
min_remaining = "1s"
[provider.source]
kind = "command"
command = "python3 $FIX/ws_upstream.py token $MCP_UP"
TOML

started=$SECONDS
code=0
timeout 120 env E2E_MCP_UPSTREAM="$MCP_UP" E2E_CALLS="$CALLS" E2E_SPACING_MS="$SPACING_MS" E2E_REVOKE_AT=2 \
    "$TOKENRELAY" run --config "$WORK/tokenrelay.toml" --log-level info -- \
    node "$WORK/mcp/mcp-client.mjs" >"$WORK/client.json" 2>"$WORK/client.err" || code=$?
[[ $code -eq 0 ]] || fail "client exited $code: $(cat "$WORK/client.json") $(tail -c 1200 "$WORK/client.err")"
elapsed=$((SECONDS - started))
http get "$MCP_UP/__stats" >"$WORK/stats.json"
st() { json "$WORK/stats.json" "$1"; }
cl() { json "$WORK/client.json" "$1"; }

for s in 0 1; do
    [[ "$(cl "d['sessions'][$s]['answers']")" -eq $CALLS ]] || fail "session $s: $(cl "d['sessions'][$s]")"
    [[ "$(cl "d['sessions'][$s]['transportErrors']")" -eq 0 ]] || fail "session $s had transport errors"
    # Notifications kept coming on the GET stream during the second half of the session.
    cl "d['sessions'][$s]['ticksAt']" >"$WORK/ticks-$s.json"
    python3 -c "import json,sys; t=json.load(open(sys.argv[1])); sys.exit(0 if t[-1] > t[len(t)//2] > t[0] >= 0 else 1)" "$WORK/ticks-$s.json" ||
        fail "session $s: notifications on the GET stream stalled: $(cat "$WORK/ticks-$s.json")"
done
[[ "$(st 'd["tool_calls"]')" -eq $((2 * CALLS)) ]] || fail "server ran $(st 'd["tool_calls"]') tool calls"
[[ "$(st 'd["rejected"]')" -eq 1 && "$(st '",".join(d["rejected_methods"])')" == "POST" ]] ||
    fail "server rejected $(st 'd["rejected"]') requests ($(st 'd["rejected_methods"]')), expected one POST"
[[ "$(st 'd["get"]')" -eq 2 ]] || fail "server saw $(st 'd["get"]') GET streams, expected one per session"
[[ "$(st 'd["delete"]')" -eq 2 && "$(st 'd["sessions_closed"]')" -eq 2 ]] || fail "sessions not deleted: $(cat "$WORK/stats.json")"
min_stream="$(st 'min(d["get_stream_ms"])')"
[[ "$min_stream" -gt $((2 * LIFETIME * 1000)) ]] || fail "a GET stream lasted only ${min_stream}ms"
posts="$(st 'd["post"]')"
summary "@modelcontextprotocol/sdk $MCP_SDK_VERSION client and server via tokenrelay run (\$TOKENRELAY_URL_TOOLS): $((2 * CALLS)) tool calls in 2 sessions (SSE and JSON answers) over ${elapsed}s, ${LIFETIME}s tokens, one revoked token retried (the client saw no 401); $posts POSTs, 2 GET streams open ≥${min_stream}ms across rotations, 2 DELETEs"
