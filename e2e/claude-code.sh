#!/usr/bin/env bash
# Claude Code (npm @anthropic-ai/claude-code, pinned in lib.sh), non-interactive (`claude -p`),
# against the fake Anthropic-compatible upstream, both faces:
#  1. proxy: `tokenrelay run --inject x-api-key -- claude` (run sets ANTHROPIC_BASE_URL and
#     ANTHROPIC_API_KEY); one process over several 4-second tokens (scripted Bash tool turns)
#     with one forced 401, absorbed by the proxy;
#  2. helper: `apiKeyHelper` in settings.json running `tokenrelay token`, with
#     CLAUDE_CODE_API_KEY_HELPER_TTL_MS=1000 so Claude Code asks often; the shared cache runs the
#     real source about once per token lifetime.
set -euo pipefail
# shellcheck source=e2e/lib.sh
source "$(dirname "$0")/lib.sh"
e2e_init claude-code
ensure_claude
CLAUDE="$TOOLS/claude/node_modules/.bin/claude"

claude_env() {
    local home="$1"
    mkdir -p "$home" "$WORK/ws"
    printf '%s\n' "HOME=$home" "XDG_CONFIG_HOME=$home/.config" \
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1" "DISABLE_AUTOUPDATER=1" \
        "DISABLE_TELEMETRY=1" "NO_COLOR=1"
}

# 1. proxy face
start_fakes 4s
mapfile -t CENV < <(claude_env "$WORK/home-proxy")
dir="$WORK/proxy"
mkdir -p "$dir"
turns=4
phrase="hello from claude through the proxy"
code=0
(cd "$WORK/ws" && timeout 120 env -u ANTHROPIC_API_KEY -u ANTHROPIC_AUTH_TOKEN "${CENV[@]}" \
    "$TOKENRELAY" run --log-level info --upstream "$UPSTREAM" --inject x-api-key \
    --token-command "$FIX/idp-token.py" -- \
    "$FIX/run-and-report.sh" "$dir" \
    "$CLAUDE" -p "e2e-tool-turns=$turns e2e-sleep=2 e2e-revoke-at-turn=2 say $phrase" \
    --allowedTools Bash 2>"$dir/tokenrelay.log") || code=$?
[[ $code -eq 0 ]] || fail "proxy: claude exited $code: $(tail -c 600 "$dir/out.txt" "$dir/err.txt")"
grep -q "pong: .*$phrase" "$dir/out.txt" || fail "proxy: answer not printed; got: $(head -c 400 "$dir/out.txt")"
calls=$((turns + 1))
accepted="$(stats accepted)"
rejected="$(stats rejected)"
acq="$(json "$dir/status.json" 'd["providers"][0]["acquisitions"]')"
retries="$(json "$dir/status.json" 'd["providers"][0]["retries"]')"
c200="$(http metric "$dir/metrics.txt" tokenrelay_responses_total status=200)"
c401="$(http metric "$dir/metrics.txt" tokenrelay_responses_total status=401)"
forwarded="$(json "$dir/status.json" 'd["providers"][0]["requests"]')"
[[ "$accepted" -eq "$calls" ]] || fail "proxy: upstream accepted $accepted, expected $calls"
[[ "$rejected" -eq 1 && "$retries" -eq 1 ]] ||
    fail "proxy: upstream rejected $rejected, proxy retried $retries (expected 1 and 1)"
# Every model request got a 200. Claude Code also probes `HEAD /` once at startup without any
# credential; the proxy answers that one 401 (no local key) and Claude Code goes on.
[[ "$forwarded" -eq "$calls" && "$c200" -eq "$calls" && "$c401" -le 1 ]] ||
    fail "proxy: forwarded $forwarded, answered $c200 with 200 and $c401 with 401 (expected $calls, $calls, at most 1 probe)"
[[ "$acq" -ge 3 ]] || fail "proxy: only $acq acquisitions"
proxy_summary="proxy: $calls calls all 200, $acq acquisitions, 1 forced 401 retried ($c401 unauthenticated HEAD / probe answered 401)"
kill "${PIDS[-1]}" 2>/dev/null || true

# 2. helper face
start_fakes 4s
home="$WORK/home-helper"
mapfile -t CENV < <(claude_env "$home")
mkdir -p "$home/.claude"
printf '{ "apiKeyHelper": "%s" }\n' "$FIX/counting-helper.sh" >"$home/.claude/settings.json"
export TOKENRELAY E2E_HELPER_LOG="$WORK/helper-runs.log" E2E_CACHE_DIR="$WORK/cache"
: >"$E2E_HELPER_LOG"
turns=6
phrase="hello from claude through the helper"
started=$SECONDS
code=0
(cd "$WORK/ws" && timeout 120 env -u ANTHROPIC_API_KEY -u ANTHROPIC_AUTH_TOKEN "${CENV[@]}" \
    ANTHROPIC_BASE_URL="$UPSTREAM" CLAUDE_CODE_API_KEY_HELPER_TTL_MS=1000 \
    "$CLAUDE" -p "e2e-tool-turns=$turns e2e-sleep=1 say $phrase" --allowedTools Bash \
    >"$WORK/helper-out.txt" 2>"$WORK/helper-err.txt") || code=$?
elapsed=$((SECONDS - started))
[[ $code -eq 0 ]] || fail "helper: claude exited $code: $(tail -c 600 "$WORK/helper-out.txt" "$WORK/helper-err.txt")"
grep -q "pong: .*$phrase" "$WORK/helper-out.txt" ||
    fail "helper: answer not printed; got: $(head -c 400 "$WORK/helper-out.txt")"
calls=$((turns + 1))
accepted="$(stats accepted)"
rejected="$(stats rejected)"
helper="$(wc -l <"$E2E_HELPER_LOG" | tr -d ' ')"
runs="$(source_runs)"
[[ "$accepted" -eq "$calls" && "$rejected" -eq 0 ]] ||
    fail "helper: upstream accepted $accepted rejected $rejected, expected $calls and 0"
[[ "$helper" -ge 2 && "$runs" -ge 1 && "$runs" -le "$helper" && "$runs" -le $((elapsed / 4 + 2)) ]] ||
    fail "helper: claude ran the helper $helper times, the source ran $runs times over ${elapsed}s"
summary "claude-code $CLAUDE_CODE_VERSION: $proxy_summary; helper (apiKeyHelper, TTL 1s): $calls calls, helper ran $helper times, real source ran $runs times over ${elapsed}s (tokens live 4s)"
