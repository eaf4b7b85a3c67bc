#!/usr/bin/env bash
# Anthropic workload identity federation (`kind = "anthropic-federated"`, `inject =
# "anthropic-oauth"`) against loopback fakes (fixtures/fake-clouds.py) of the GitHub Actions
# OIDC endpoint, Anthropic's token endpoint (JSON jwt-bearer grant: grant type, the assertion's
# signature and audience, the rule/organization/service account ids, the two betas) and the
# Messages API (Bearer of a live OAuth token, `anthropic-beta` with oauth-2025-04-20):
#   - `tokenrelay token` and `check` obtain a token;
#   - `tokenrelay serve` keeps a client at 200 across several 3-second lifetimes, the client's
#     own `anthropic-beta` kept next to the injected one;
#   - refusals (wrong audience, wrong rule, missing id) are one line naming source and field;
#   - the composite action with `provider: anthropic` in a simulated Actions step, then a request
#     and Claude Code (pinned in lib.sh) runs across several lifetimes with only what it exported.
set -euo pipefail
# shellcheck source=e2e/lib.sh
source "$(dirname "$0")/lib.sh"
e2e_init anthropic-federated

LIFETIME_S=3
python3 "$FIX/fake-clouds.py" "$WORK" "$LIFETIME_S" 2>"$WORK/fake.log" &
PIDS+=($!)
for ((i = 0; i < 100; i++)); do
    [[ -s "$WORK/clouds.json" ]] && break
    sleep 0.1
done
[[ -s "$WORK/clouds.json" ]] || fail "fake-clouds did not start: $(cat "$WORK/fake.log")"
C="$WORK/clouds.json"
URL="$(json "$C" 'd["url"]')"
RULE="$(json "$C" 'd["anthropic"]["federation_rule_id"]')"
ORG="$(json "$C" 'd["anthropic"]["organization_id"]')"
SVAC="$(json "$C" 'd["anthropic"]["service_account_id"]')"
export ACTIONS_ID_TOKEN_REQUEST_URL="$URL/oidc?api-version=2.0"
ACTIONS_ID_TOKEN_REQUEST_TOKEN="$(json "$C" 'd["oidc_request_token"]')"
export ACTIONS_ID_TOKEN_REQUEST_TOKEN TOKENRELAY_CACHE_DIR="$WORK/cache"
unset HTTPS_PROXY HTTP_PROXY ALL_PROXY https_proxy http_proxy all_proxy

port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
config() { # EXTRA_SOURCE_LINES
    printf 'listen = "127.0.0.1:%s"\n[[provider]]\nname = "anthropic"\nupstream = "%s"\ninject = "anthropic-oauth"\n' "$port" "$URL"
    printf '[provider.source]\nkind = "anthropic-federated"\ntoken_url = "%s"\n%s\n' "$URL/anthropic/v1/oauth/token" "$1"
}
config "$(printf 'federation_rule_id = "%s"\norganization_id = "%s"\nservice_account_id = "%s"' "$RULE" "$ORG" "$SVAC")" >"$WORK/ok.toml"

# 1. token and check
tok="$(timeout 30 "$TOKENRELAY" token --config "$WORK/ok.toml" 2>"$WORK/token.err")" ||
    fail "tokenrelay token: $(cat "$WORK/token.err")"
[[ "$tok" == sk-ant-oat01-TKFSECRET-* ]] || fail "tokenrelay token printed no Anthropic OAuth token"
timeout 30 "$TOKENRELAY" check --config "$WORK/ok.toml" >"$WORK/check.txt" 2>&1 || fail "check: $(cat "$WORK/check.txt")"
grep -q "anthropic-federated" "$WORK/check.txt" || fail "check does not name the source: $(cat "$WORK/check.txt")"
grep -q TKFSECRET "$WORK/check.txt" && fail "check printed a token"
# the ids from the environment, as an Actions job sets them
(export ANTHROPIC_FEDERATION_RULE_ID="$RULE" ANTHROPIC_ORGANIZATION_ID="$ORG" ANTHROPIC_SERVICE_ACCOUNT_ID="$SVAC"
    config "" >"$WORK/env.toml"
    timeout 30 "$TOKENRELAY" token --no-cache --config "$WORK/env.toml" >/dev/null 2>"$WORK/token-env.err") ||
    fail "token with the ids from the environment: $(cat "$WORK/token-env.err")"
note "token + check: ok (ids from the table and from ANTHROPIC_* variables)"

# 2. serve over several lifetimes; the client's beta is kept next to oauth-2025-04-20
"$TOKENRELAY" serve --config "$WORK/ok.toml" >"$WORK/serve.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$port/readyz"
http post "$URL/__reset" >/dev/null
python3 - "http://127.0.0.1:$port" "$LIFETIME_S" >"$WORK/client.txt" 2>&1 <<'PY' || fail "client through serve: $(tail -5 "$WORK/client.txt")"
import json, sys, time, urllib.request, urllib.error
base, life = sys.argv[1], int(sys.argv[2])
ok = bad = 0
end = time.time() + 3 * life + 1
while time.time() < end:
    body = json.dumps({"model": "claude-sonnet-4-5", "max_tokens": 8, "messages": [{"role": "user", "content": "ping"}]}).encode()
    req = urllib.request.Request(base + "/v1/messages", data=body, headers={
        "Content-Type": "application/json", "anthropic-version": "2023-06-01",
        "anthropic-beta": "e2e-client-beta", "x-api-key": "client-placeholder"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            ok += r.status == 200
    except urllib.error.HTTPError as e:
        bad += 1
        print(f"HTTP {e.code} {e.read()[:200]!r}")
    time.sleep(0.1)
print(f"ok={ok} bad={bad}")
sys.exit(1 if bad or not ok else 0)
PY
result="$(tail -1 "$WORK/client.txt")"
st="$(http get "$URL/__stats")"
ex="$(echo "$st" | json - 'd.get("anthropic_exchange", 0)')"
kept="$(echo "$st" | json - 'd.get("client_betas_kept", 0)')"
acc="$(echo "$st" | json - 'd.get("upstream_accepted", 0)')"
[[ "$ex" -ge 3 ]] || fail "serve: only $ex exchanges over 3 lifetimes: $st"
[[ "$kept" -eq "$acc" ]] || fail "serve: the client's anthropic-beta reached upstream on $kept of $acc requests"
grep -q TKFSECRET "$WORK/serve.log" && fail "serve logged a token"
note "serve: $result, $ex exchanges, client beta kept on $kept/$acc"
kill "${PIDS[-1]}" 2>/dev/null || true

# 3. refusals
refusal() { # NAME CONFIG WANT...
    local name="$1" cfg="$2"
    shift 2
    local rc=0 out w
    out="$(env -u ANTHROPIC_ORGANIZATION_ID timeout 30 "$TOKENRELAY" token --no-cache --config "$cfg" 2>&1)" || rc=$?
    [[ $rc -ne 0 ]] || fail "$name: tokenrelay token succeeded"
    [[ "$(printf '%s\n' "$out" | wc -l)" -eq 1 ]] || fail "$name: more than one line: $out"
    for w in "$@"; do
        [[ "$out" == *"$w"* ]] || fail "$name: the error does not say \"$w\": $out"
    done
    note "refusal ($name, exit $rc): $out"
}
ids="$(printf 'federation_rule_id = "%s"\norganization_id = "%s"\nservice_account_id = "%s"' "$RULE" "$ORG" "$SVAC")"
config "$(printf '%s\n[provider.source.subject]\nkind = "github-oidc"\naudience = "https://wrong.example"' "$ids")" >"$WORK/aud.toml"
refusal "wrong audience" "$WORK/aud.toml" "anthropic-federated source" "HTTP 401" "authentication_error" "audience"
config "$(printf 'federation_rule_id = "fdrl_other"\norganization_id = "%s"\nservice_account_id = "%s"' "$ORG" "$SVAC")" >"$WORK/rule.toml"
refusal "wrong rule" "$WORK/rule.toml" "anthropic-federated source (rule fdrl_other" "HTTP 400" "federation_rule_id"
config "$(printf 'federation_rule_id = "%s"\nservice_account_id = "%s"' "$RULE" "$SVAC")" >"$WORK/org.toml"
refusal "missing id" "$WORK/org.toml" "source.organization_id" "ANTHROPIC_ORGANIZATION_ID"

# 4. the composite action with provider: anthropic, in a simulated Actions step
runner="$WORK/runner"
mkdir -p "$runner/temp"
: >"$runner/env"
: >"$runner/output"
aport="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
(
    export GITHUB_ENV="$runner/env" GITHUB_OUTPUT="$runner/output" RUNNER_TEMP="$runner/temp"
    export GITHUB_ACTION_PATH="$ROOT/.github/actions/tokenrelay" INPUT_PROVIDER=anthropic
    export INPUT_UPSTREAM="$URL" INPUT_TOKEN_URL="$URL/anthropic/v1/oauth/token" INPUT_FEDERATION_RULE_ID="$RULE"
    export INPUT_ORGANIZATION_ID="$ORG" INPUT_SERVICE_ACCOUNT_ID="$SVAC" INPUT_LISTEN="127.0.0.1:$aport"
    export INPUT_TOKENRELAY="$TOKENRELAY" INPUT_READY_TIMEOUT=20
    timeout 60 bash "$ROOT/.github/actions/tokenrelay/start.sh"
) >"$WORK/step.log" 2>&1 || fail "the action (provider anthropic) failed: $(tail -n 8 "$WORK/step.log")"
apid="$(sed -n 's/^pid=//p' "$runner/output")"
PIDS+=("$apid")
base="$(sed -n 's/^ANTHROPIC_BASE_URL=//p' "$runner/env")"
akey="$(sed -n 's/^ANTHROPIC_API_KEY=//p' "$runner/env")"
grep -q '^COPILOT_PROVIDER_TYPE=anthropic$' "$runner/env" || fail "the action did not export COPILOT_PROVIDER_TYPE=anthropic"
python3 - "$base" "$akey" <<'PY' || fail "a request with the action's exported ANTHROPIC_BASE_URL/ANTHROPIC_API_KEY failed"
import json, sys, urllib.request
req = urllib.request.Request(sys.argv[1] + "/v1/messages", data=json.dumps({"model": "m", "max_tokens": 8,
    "messages": [{"role": "user", "content": "ping"}]}).encode(),
    headers={"Content-Type": "application/json", "x-api-key": sys.argv[2], "anthropic-version": "2023-06-01"})
with urllib.request.urlopen(req, timeout=10) as r:
    sys.exit(0 if r.status == 200 else 1)
PY
grep -qxF "::add-mask::$akey" "$WORK/step.log" || fail "the action did not mask the local key"
# The next step: Claude Code with only what the action exported, across several token lifetimes.
ensure_claude
mapfile -t STEP_ENV <"$runner/env"
mkdir -p "$WORK/claude-home" "$WORK/ws"
http post "$URL/__reset" >/dev/null
started=$SECONDS
runs=0
while ((runs < 3 || SECONDS - started < 3 * LIFETIME_S)) && ((runs < 15)); do
    code=0
    (cd "$WORK/ws" && timeout 90 env -u ANTHROPIC_AUTH_TOKEN HOME="$WORK/claude-home" \
        XDG_CONFIG_HOME="$WORK/claude-home/.config" CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 \
        DISABLE_AUTOUPDATER=1 DISABLE_TELEMETRY=1 NO_COLOR=1 "${STEP_ENV[@]}" \
        "$TOOLS/claude/node_modules/.bin/claude" -p "say hi" >"$WORK/claude-$runs.out" 2>"$WORK/claude-$runs.err") || code=$?
    [[ $code -eq 0 ]] || fail "claude after the action (run $runs) exited $code: $(tail -c 600 "$WORK/claude-$runs.out" "$WORK/claude-$runs.err")"
    grep -q "pong" "$WORK/claude-$runs.out" || fail "claude run $runs printed no answer: $(head -c 400 "$WORK/claude-$runs.out")"
    runs=$((runs + 1))
done
st="$(http get "$URL/__stats")"
msgs="$(echo "$st" | json - 'd.get("anthropic_messages", 0)')"
[[ "$(echo "$st" | json - 'd.get("upstream_rejected", 0)')" -eq 0 && "$msgs" -ge "$runs" ]] ||
    fail "claude after the action: $msgs Messages calls accepted for $runs runs: $st"
[[ "$(echo "$st" | json - 'd.get("anthropic_exchange", 0)')" -ge 3 ]] || fail "claude after the action: no rotation over $((SECONDS - started))s: $st"
kill "$apid" 2>/dev/null || true
if grep -rqF TKFSECRET "$WORK/step.log" "$runner/env" "$runner/output" "$runner/temp" "$WORK"/claude-*; then
    fail "an Anthropic token leaked into a step file or log"
fi
note "composite action (provider: anthropic): exported ANTHROPIC_BASE_URL/ANTHROPIC_API_KEY work (urllib, then claude -p $runs runs over $((SECONDS - started))s, $msgs Messages calls, 0 refused)"

echo "PASS anthropic-federated: token/check, serve $result across 3 lifetimes, 3 refusals, the action's provider: anthropic (urllib + Claude Code $runs runs)"
