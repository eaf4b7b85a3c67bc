#!/usr/bin/env bash
# Codex (npm @openai/codex) and Copilot CLI (npm @github/copilot), pinned in lib.sh, over their
# Responses-over-WebSocket transports through `tokenrelay run`, offline, against the loopback
# WebSocket upstream (e2e/fixtures/ws_upstream.py) that checks the token at each handshake.
# Codex: a model provider with `wire_api = "responses"` and `supports_websockets = true`.
# Copilot CLI: COPILOT_PROVIDER_TRANSPORT=websockets and COPILOT_PROVIDER_WIRE_API=responses.
# Each client: three prompts (one process each) over several 3-second tokens, every token
# revoked before the second. Asserts: each answer printed; every /responses call arrived as a
# WebSocket handshake (no plain HTTP at all); the upstream rejected exactly the one handshake
# with a revoked token, which tokenrelay retried; the proxy answered no 401.
set -euo pipefail
# shellcheck source=e2e/lib.sh
source "$(dirname "$0")/lib.sh"
e2e_init ws-agents
ensure_realtime_venv
ensure_codex
ensure_npm

LIFETIME=3
export E2E_SPACING=3.5 FIX
export CODEX_BIN="$TOOLS/codex/node_modules/.bin/codex"
COPILOT_BIN="$(COPILOT_BIN)"
export COPILOT_BIN
summaries=()

# agent NAME ENV...: three prompts with client NAME under tokenrelay run.
agent() {
    local name="$1"
    shift
    local dir="$WORK/$name"
    mkdir -p "$dir/home" "$dir/ws"
    start_ws_upstream "$LIFETIME"
    export E2E_WS_UPSTREAM="$WS_UPSTREAM"
    cat >"$dir/home/config.toml" <<TOML
model = "gpt-5.1"
model_provider = "tokenrelay"
[model_providers.tokenrelay]
name = "tokenrelay"
base_url = "http://127.0.0.1:1"   # replaced by -c with \$TOKENRELAY_URL
env_key = "TOKENRELAY_LOCAL_KEY"
wire_api = "responses"
supports_websockets = true
TOML
    local code=0
    (cd "$dir/ws" && timeout 180 env -u GH_TOKEN -u GITHUB_TOKEN -u COPILOT_GITHUB_TOKEN \
        -u OPENAI_API_KEY CODEX_HOME="$dir/home" "$@" \
        "$TOKENRELAY" run --log-level info --upstream "$WS_UPSTREAM/v1" --inject bearer \
        --min-remaining 1s --token-command "python3 $FIX/ws_upstream.py token $WS_UPSTREAM" -- \
        "$FIX/ws-prompts.sh" "$dir" "$name" 2>"$dir/tokenrelay.log") || code=$?
    [[ $code -eq 0 ]] || fail "$name: exited $code: $(tail -c 800 "$dir"/err-*.txt 2>/dev/null) $(tail -c 400 "$dir/tokenrelay.log")"
    local i
    for i in 1 2 3; do
        # Copilot puts a <current_datetime> block before the prompt in the same message.
        tr '\n' ' ' <"$dir/out-$i.txt" | grep -q "pong: .*websocket prompt $i" ||
            fail "$name: prompt $i not answered: $(head -c 400 "$dir/out-$i.txt") $(tail -c 400 "$dir/err-$i.txt")"
    done
    local accepted rejected http paths retries c401 responses
    accepted="$(ws_stats 'd["accepted"]')"
    rejected="$(ws_stats 'd["rejected"]')"
    http="$(ws_stats 'len(d["http"])')"
    paths="$(ws_stats '",".join(sorted(set(d["paths"])))')"
    responses="$(ws_stats 'd["responses"]')"
    retries="$(json "$dir/status.json" 'd["providers"][0]["retries"]')"
    local beta
    beta="$(ws_stats '",".join(sorted(set(str(b) for b in d["beta"])))')"
    [[ "$http" -eq 0 ]] || fail "$name: plain HTTP requests reached the upstream: $(ws_stats 'd["http"]')"
    [[ "$paths" == "/v1/responses" ]] || fail "$name: handshakes went to $paths"
    [[ "$accepted" -ge 3 ]] || fail "$name: only $accepted handshakes accepted for 3 prompts"
    [[ "$rejected" -eq 1 && "$retries" -eq 1 ]] || fail "$name: upstream rejected $rejected handshakes, proxy retried $retries (expected 1 and 1)"
    [[ "$responses" -ge 3 ]] || fail "$name: $responses response.create messages"
    note "$name: 3 prompts, $accepted WebSocket handshakes accepted, 1 rejected (revoked) and retried, $responses response.create messages, no plain HTTP; OpenAI-Beta: $beta"
    summaries+=("$name ${accepted}ws/3prompts")
    kill "${PIDS[-1]}" 2>/dev/null || true
}

agent codex
mapfile -t CENV < <(copilot_env)
agent copilot "${CENV[@]}" COPILOT_PROVIDER_TRANSPORT=websockets COPILOT_PROVIDER_WIRE_API=responses
summary "Codex $CODEX_VERSION (supports_websockets) and Copilot CLI $COPILOT_VERSION (COPILOT_PROVIDER_TRANSPORT=websockets) via tokenrelay run: ${summaries[*]}; every /responses call a WebSocket handshake, one revoked token retried each"
