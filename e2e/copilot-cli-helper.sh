#!/usr/bin/env bash
# Copilot CLI (offline BYOK, straight at the fake upstream, no proxy) with
# `tokenrelay token` as COPILOT_PROVIDER_API_KEY_COMMAND: Copilot runs the command before
# every model request; the helper's shared cache answers from disk and runs the real source
# (the IdP token fixture) only when the cached token nears its expiry.
#
# One `copilot -p` process, its conversation scripted by the fake upstream into several tool
# turns so that it outlives several 4-second tokens. Asserts the answer, that every upstream
# request carried a valid token, that Copilot ran the helper once per request, and that the
# real source ran far fewer times (about once per token lifetime).
#
# No forced 401 here: with the helper face the client, not tokenrelay, sees the upstream's
# answer, and Copilot CLI does not tell the helper about a 401 (see docs/clients.md).
set -euo pipefail
# shellcheck source=e2e/lib.sh
source "$(dirname "$0")/lib.sh"
e2e_init copilot-cli-helper
ensure_npm

LIFETIME_S=4
TURNS=6
SLEEP=1
start_fakes "${LIFETIME_S}s"
export TOKENRELAY
export E2E_HELPER_LOG="$WORK/helper-runs.log" E2E_CACHE_DIR="$WORK/cache"
: >"$E2E_HELPER_LOG"
mapfile -t CENV < <(copilot_env)

phrase="hello through the helper"
started=$SECONDS
code=0
(cd "$WORK/ws" && timeout 120 env -u GH_TOKEN -u GITHUB_TOKEN -u COPILOT_GITHUB_TOKEN \
    "${CENV[@]}" \
    COPILOT_PROVIDER_TYPE=openai \
    COPILOT_PROVIDER_BASE_URL="$UPSTREAM/v1" \
    COPILOT_PROVIDER_API_KEY_COMMAND="$FIX/counting-helper.sh" \
    "$(COPILOT_BIN)" -p "e2e-tool-turns=$TURNS e2e-sleep=$SLEEP say $phrase" \
    --allow-all-tools --no-auto-update -s --log-dir "$WORK/logs" \
    >"$WORK/out.txt" 2>"$WORK/err.txt") || code=$?
elapsed=$((SECONDS - started))
[[ $code -eq 0 ]] || fail "copilot exited $code: $(tail -c 600 "$WORK/out.txt" "$WORK/err.txt")"
tr '\n' ' ' <"$WORK/out.txt" | grep -q "pong: .*$phrase" ||
    fail "answer not printed; got: $(head -c 400 "$WORK/out.txt")"

calls=$((TURNS + 1))
requests="$(stats requests)"
accepted="$(stats accepted)"
rejected="$(stats rejected)"
issued="$(stats tokens_issued)"
helper="$(wc -l <"$E2E_HELPER_LOG" | tr -d ' ')"
runs="$(source_runs)"
max_runs=$((elapsed / LIFETIME_S + 2))
[[ "$rejected" -eq 0 ]] || fail "upstream rejected $rejected requests (an expired token was sent)"
[[ "$accepted" -eq "$calls" && "$requests" -eq "$calls" ]] ||
    fail "upstream saw $requests requests, accepted $accepted; expected $calls"
[[ "$helper" -ge "$calls" ]] || fail "copilot ran the helper $helper times for $calls requests"
[[ "$runs" -eq "$issued" ]] || fail "source ran $runs times but the IdP issued $issued tokens"
[[ "$runs" -ge 2 && "$runs" -le "$max_runs" && "$runs" -lt "$helper" ]] ||
    fail "source ran $runs times for $helper helper runs over ${elapsed}s (expected 2..$max_runs)"
summary "copilot $COPILOT_VERSION with COPILOT_PROVIDER_API_KEY_COMMAND='tokenrelay token': $calls requests, helper ran $helper times, real source ran $runs times over ${elapsed}s (tokens live ${LIFETIME_S}s), upstream rejected 0"
