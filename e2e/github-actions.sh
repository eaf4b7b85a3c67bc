#!/usr/bin/env bash
# The GitHub Actions composite action (.github/actions/tokenrelay) for DESIGN.md problem 2,
# run locally in a simulated Actions environment: the job's OIDC endpoint
# (ACTIONS_ID_TOKEN_REQUEST_URL/TOKEN) and Entra's token endpoint are served on loopback by
# fixtures/fake-actions-entra.py, which checks the audience, the request token, the
# client_assertion, client_id, grant_type and scope, and hands out tokens of the demo IdP that
# the fake Azure OpenAI upstream accepts. The action's step script starts tokenrelay with the
# github-oidc-entra source; the next "step" runs an agent (Copilot CLI, type azure) with the
# environment the action exported, over several token lifetimes and one forced 401.
set -euo pipefail
# shellcheck source=e2e/lib.sh
source "$(dirname "$0")/lib.sh"
e2e_init github-actions
ACTION_DIR="$ROOT/.github/actions/tokenrelay"

ensure_npm

# The action's inputs all reach start.sh as INPUT_* variables.
python3 - "$ACTION_DIR/action.yml" <<'PY' || fail "action.yml does not pass every input to start.sh"
import re, sys
text = open(sys.argv[1], encoding="utf-8").read()
inputs_block = text.split("\ninputs:\n", 1)[1].split("\noutputs:\n", 1)[0]
declared = set(re.findall(r"^  ([a-z][a-z-]*):$", inputs_block, re.M))
mapped = dict(re.findall(r"^        (INPUT_[A-Z_]+): \$\{\{ inputs\.([a-z-]+) \}\}$", text, re.M))
ok = set(mapped.values()) == declared and all(k == "INPUT_" + v.upper().replace("-", "_") for k, v in mapped.items())
ok = ok and 'run: bash "$GITHUB_ACTION_PATH/start.sh"' in text and "using: composite" in text
sys.exit(0 if ok else 1)
PY

LIFETIME_S=4
SCOPE="https://cognitiveservices.azure.com/.default"
start_fakes "${LIFETIME_S}s"
python3 "$FIX/fake-actions-entra.py" "$FAKES" "$SCOPE" >"$WORK/gh.json" 2>"$WORK/gh.log" &
PIDS+=($!)
for ((i = 0; i < 100; i++)); do
    [[ -s "$WORK/gh.json" ]] && break
    sleep 0.1
done
[[ -s "$WORK/gh.json" ]] || fail "fake Actions/Entra did not start: $(cat "$WORK/gh.log")"
gh() { json "$WORK/gh.json" "d[\"$1\"]"; }
entra_stats() { http get "$(gh authority_host)/__stats" | json - "d[\"$1\"]"; }

# The step, with the job's OIDC variables and the inputs of `uses: ./.github/actions/tokenrelay`
# `with:`.
action_step "provider azure" ACTIONS_ID_TOKEN_REQUEST_URL="$(gh actions_url)" \
    ACTIONS_ID_TOKEN_REQUEST_TOKEN="$(gh actions_token)" INPUT_UPSTREAM="$UPSTREAM" \
    INPUT_TENANT_ID="$(gh tenant_id)" INPUT_CLIENT_ID="$(gh client_id)" \
    INPUT_AUTHORITY_HOST="$(gh authority_host)" INPUT_SCOPE="$SCOPE" \
    INPUT_AUDIENCE="api://AzureADTokenExchange" INPUT_INJECT=bearer
grep -q '^::add-mask::trl-' "$WORK/step1.log" || fail "the local key was not masked"

# The next step: an agent with the environment the action exported (and nothing else from it).
mapfile -t STEP_ENV <"$runner/env"
mapfile -t CENV < <(copilot_env)
phrase="hello from the actions job"
turns=4
code=0
(cd "$WORK/ws" && timeout 120 env -u GH_TOKEN -u GITHUB_TOKEN -u COPILOT_GITHUB_TOKEN \
    "${CENV[@]}" "${STEP_ENV[@]}" \
    "$(COPILOT_BIN)" -p "e2e-tool-turns=$turns e2e-sleep=2 e2e-revoke-at-turn=2 say $phrase" \
    --allow-all-tools --no-auto-update -s --log-dir "$WORK/copilot-logs" \
    >"$WORK/out.txt" 2>"$WORK/err.txt") || code=$?
[[ $code -eq 0 ]] || fail "copilot exited $code: $(tail -c 600 "$WORK/out.txt" "$WORK/err.txt")"
tr '\n' ' ' <"$WORK/out.txt" | grep -q "pong: .*$phrase" ||
    fail "answer not printed; got: $(head -c 400 "$WORK/out.txt")"

url="$(sed -n 's/^TOKENRELAY_URL=//p' "$runner/env")"
key="$(sed -n 's/^TOKENRELAY_LOCAL_KEY=//p' "$runner/env")"
http get "$url/status" "$key" >"$WORK/status.json"
http get "$url/metrics" >"$WORK/metrics.txt"
# The job ends: the runner stops the proxy (it would otherwise go on refreshing in the background).
kill "$pid"
for ((i = 0; i < 50; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
done
calls=$((turns + 1))
accepted="$(stats accepted)"
rejected="$(stats rejected)"
by_scope="$(stats "d[\"accepted_by_scope\"].get(\"$SCOPE\", 0)")"
acq="$(json "$WORK/status.json" 'd["providers"][0]["acquisitions"]')"
kind="$(json "$WORK/status.json" 'd["providers"][0]["source_kind"]')"
retries="$(json "$WORK/status.json" 'd["providers"][0]["retries"]')"
c401="$(http metric "$WORK/metrics.txt" tokenrelay_responses_total status=401)"
oidc="$(entra_stats oidc_issued)"
entra="$(entra_stats entra_issued)"
entra_bad="$(entra_stats entra_rejected)"
oidc_bad="$(entra_stats oidc_rejected)"
[[ "$kind" == "github-oidc-entra" ]] || fail "the proxy's source is $kind"
[[ "$entra_bad" -eq 0 && "$oidc_bad" -eq 0 ]] ||
    fail "fake Entra rejected $entra_bad exchanges ($(entra_stats last_entra_error)), OIDC rejected $oidc_bad"
[[ "$accepted" -eq "$calls" && "$by_scope" -eq "$calls" ]] ||
    fail "upstream accepted $accepted ($by_scope with scope $SCOPE), expected $calls"
[[ "$rejected" -eq 1 && "$retries" -eq 1 && "$c401" -eq 0 ]] ||
    fail "upstream rejected $rejected, proxy retried $retries, client saw $c401 401s (expected 1, 1, 0)"
# /status was read when the agent finished; one background refresh may have started since.
[[ "$acq" -ge 3 && "$entra" -ge "$acq" && "$entra" -le $((acq + 1)) &&
    "$oidc" -ge "$entra" && "$oidc" -le $((entra + 1)) ]] ||
    fail "acquisitions $acq, Entra exchanges $entra, OIDC tokens minted $oidc"
summary "composite action + github-oidc-entra (simulated Actions, fake Entra): copilot (azure) $calls model calls, $acq acquisitions ($oidc OIDC mints, $entra Entra exchanges by shutdown) (tokens live ${LIFETIME_S}s), 1 forced 401 retried by the proxy, 0 seen by the client"
