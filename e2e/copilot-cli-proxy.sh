#!/usr/bin/env bash
# Copilot CLI (npm @github/copilot, pinned in lib.sh) in offline BYOK mode through
# `tokenrelay run`, once per provider type it supports: openai (chat completions and the
# Responses API), azure and anthropic.
#
# Each run is one `copilot -p` process whose conversation the fake upstream scripts into
# several tool turns (a `bash` tool call that sleeps), so the single process outlives several
# 4-second tokens; at turn 2 the upstream revokes every token issued so far (one forced 401).
# Asserts: the printed answer; every upstream request carried a valid token except the one
# revoked; tokenrelay retried that one; the client got no 401; acquisitions happened.
set -euo pipefail
# shellcheck source=e2e/lib.sh
source "$(dirname "$0")/lib.sh"
e2e_init copilot-cli-proxy
ensure_npm

LIFETIME=4s
TURNS=4
SLEEP=2
COPILOT="$(COPILOT_BIN)"
mapfile -t CENV < <(copilot_env)
summaries=()

# scenario NAME INJECT UPSTREAM_SUFFIX [EXTRA_ENV...]
scenario() {
    local name="$1" inject="$2" suffix="$3"
    shift 3
    local dir="$WORK/$name"
    mkdir -p "$dir"
    start_fakes "$LIFETIME"
    local phrase="hello from $name"
    local prompt="e2e-tool-turns=$TURNS e2e-sleep=$SLEEP e2e-revoke-at-turn=2 say $phrase"
    local code=0
    (cd "$WORK/ws" && timeout 120 env -u GH_TOKEN -u GITHUB_TOKEN -u COPILOT_GITHUB_TOKEN \
        "${CENV[@]}" "$@" \
        "$TOKENRELAY" run --log-level info --upstream "$UPSTREAM$suffix" --inject "$inject" \
        --token-command "$FIX/idp-token.py" -- \
        "$FIX/run-and-report.sh" "$dir" \
        "$COPILOT" -p "$prompt" --allow-all-tools --no-auto-update -s --log-dir "$dir/logs" \
        2>"$dir/tokenrelay.log") || code=$?
    [[ $code -eq 0 ]] || fail "$name: copilot exited $code: $(tail -c 600 "$dir/err.txt" 2>/dev/null)"
    tr '\n' ' ' <"$dir/out.txt" | grep -q "pong: .*$phrase" ||
        fail "$name: answer not printed; got: $(head -c 400 "$dir/out.txt")"
    grep -q "COPILOT_PROVIDER_TYPE=$(expected_type "$inject")" "$dir/run-env.txt" ||
        fail "$name: tokenrelay run set $(grep COPILOT_PROVIDER_TYPE "$dir/run-env.txt")"

    local calls=$((TURNS + 1))
    local requests accepted rejected issued acq retries ok401 ok200
    requests="$(stats requests)"
    accepted="$(stats accepted)"
    rejected="$(stats rejected)"
    issued="$(stats tokens_issued)"
    acq="$(json "$dir/status.json" 'd["providers"][0]["acquisitions"]')"
    retries="$(json "$dir/status.json" 'd["providers"][0]["retries"]')"
    ok200="$(http metric "$dir/metrics.txt" tokenrelay_responses_total status=200)"
    ok401="$(http metric "$dir/metrics.txt" tokenrelay_responses_total status=401)"
    [[ "$accepted" -eq "$calls" ]] || fail "$name: upstream accepted $accepted, expected $calls model calls"
    [[ "$rejected" -eq 1 ]] || fail "$name: upstream rejected $rejected (expected only the forced revocation)"
    [[ "$requests" -eq $((accepted + rejected)) ]] || fail "$name: requests $requests != accepted + rejected"
    [[ "$retries" -eq 1 ]] || fail "$name: proxy retried $retries times, expected 1"
    [[ "$ok200" -eq "$calls" ]] || fail "$name: client got $ok200 answers with 200, expected $calls"
    [[ "$ok401" -eq 0 ]] || fail "$name: the client saw $ok401 responses with 401"
    [[ "$acq" -ge 3 ]] || fail "$name: only $acq acquisitions over the run (expected refreshes)"
    # /status is read when copilot exits; a background refresh may start (and be cut short by
    # the shutdown: the source ran, the IdP issued nothing) just after.
    local runs
    runs="$(source_runs)"
    [[ "$issued" -ge "$acq" && "$issued" -le $((acq + 1)) && "$runs" -ge "$issued" &&
        "$runs" -le $((issued + 1)) ]] ||
        fail "$name: acquisitions $acq, source runs $runs, IdP issued $issued"
    note "$name: $calls model calls, upstream accepted $accepted rejected $rejected, proxy retried $retries, client 401s $ok401, $acq acquisitions (source ran $runs times)"
    summaries+=("$name ${acq}acq/${calls}calls")
    kill "${PIDS[-1]}" 2>/dev/null || true
}

expected_type() {
    case "$1" in
        api-key) echo azure ;;
        x-api-key) echo anthropic ;;
        *) echo openai ;;
    esac
}

scenario openai bearer /v1
scenario openai-responses bearer /v1 COPILOT_PROVIDER_WIRE_API=responses
scenario azure api-key ""
scenario anthropic x-api-key ""

summary "copilot $COPILOT_VERSION via tokenrelay run: ${summaries[*]}; 1 forced 401 each, retried by the proxy, 0 seen by the client"
