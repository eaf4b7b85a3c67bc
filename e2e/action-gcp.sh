#!/usr/bin/env bash
# The composite action (.github/actions/tokenrelay) with `provider: gcp`, end to end in a
# simulated Actions runner, against fixtures/fake-clouds.py (the fakes e2e/google.sh checks
# against the real google-auth): the job's OIDC endpoint (ACTIONS_ID_TOKEN_REQUEST_URL/TOKEN),
# Google STS (token exchange: grant and token types, the pool provider as audience, the subject
# JWT's signature and its audience https://iam.googleapis.com/ + provider), IAM Credentials
# (`generateAccessToken` with the STS token as bearer, for the one service account it knows)
# and a Vertex-shaped upstream that answers only with a live token from them.
# The action's start.sh runs as a step with workload-identity-provider + service-account, its
# token-url and iam-credentials-url inputs pointing at the fakes; the next step runs Claude Code
# (pinned in lib.sh) in Vertex mode with only what the action exported (ANTHROPIC_VERTEX_BASE_URL,
# CLAUDE_CODE_SKIP_VERTEX_AUTH=1, CLOUD_ML_REGION) plus CLAUDE_CODE_USE_VERTEX=1 and the project,
# several times across tokens that live 3 s, while a client calls Claude on Vertex
# (`:rawPredict`) and the OpenAI-compatible endpoint every 0.1 s: zero failures. No token may
# reach the step's output, GITHUB_ENV/GITHUB_OUTPUT or the proxy's log; the local key is masked.
set -euo pipefail
# shellcheck source=e2e/lib.sh
source "$(dirname "$0")/lib.sh"
e2e_init action-gcp
ensure_claude
CLAUDE="$TOOLS/claude/node_modules/.bin/claude"

LIFETIME_S=3
REGION="us-east5"
python3 "$FIX/fake-clouds.py" "$WORK" "$LIFETIME_S" 2>"$WORK/fake.log" &
PIDS+=($!)
for ((i = 0; i < 100; i++)); do
    [[ -s "$WORK/clouds.json" ]] && break
    sleep 0.1
done
[[ -s "$WORK/clouds.json" ]] || fail "fake-clouds did not start: $(cat "$WORK/fake.log")"
C="$WORK/clouds.json"
URL="$(json "$C" 'd["url"]')"
fstats() { http get "$URL/__stats" | json - "$1"; }

# 1. The action's step in a simulated runner: the job's OIDC variables, then the inputs of
# `uses: ./.github/actions/tokenrelay` `with:`.
action_step "provider gcp" ACTIONS_ID_TOKEN_REQUEST_URL="$URL/oidc?api-version=2.0" \
    ACTIONS_ID_TOKEN_REQUEST_TOKEN="$(json "$C" 'd["oidc_request_token"]')" \
    -GOOGLE_APPLICATION_CREDENTIALS -CLOUDSDK_CONFIG -GCE_METADATA_HOST HOME="$WORK/runner-home" \
    INPUT_PROVIDER=gcp INPUT_WORKLOAD_IDENTITY_PROVIDER="$(json "$C" 'd["wip"]')" \
    INPUT_SERVICE_ACCOUNT="$(json "$C" 'd["sa"]')" INPUT_REGION="$REGION" \
    INPUT_TOKEN_URL="$URL/sts/v1/token" INPUT_IAM_CREDENTIALS_URL="$URL/iam" INPUT_UPSTREAM="$URL"
key="$(sed -n 's/^TOKENRELAY_LOCAL_KEY=//p' "$runner/env")"
grep -qxF "::add-mask::$key" "$WORK/step1.log" || fail "the local key was not masked"
for v in ANTHROPIC_VERTEX_BASE_URL=http://127.0.0.1:$port/v1 CLAUDE_CODE_SKIP_VERTEX_AUTH=1 CLOUD_ML_REGION=$REGION; do
    grep -qxF "$v" "$runner/env" || fail "the action did not export $v"
done

# 2. The next step: Claude Code in Vertex mode, several runs across token lifetimes, with a
# steady client beside it.
mapfile -t STEP_ENV <"$runner/env"
base="$(sed -n 's/^ANTHROPIC_VERTEX_BASE_URL=//p' "$runner/env")"
python3 - "$base" "$REGION" "$WORK/stop" >"$WORK/load.txt" 2>&1 <<'PY' &
import json, os, sys, time, urllib.error, urllib.request
base, region, stop, ok, bad, end = sys.argv[1], sys.argv[2], sys.argv[3], 0, 0, time.time() + 60
calls = [(f"/projects/proj/locations/{region}/publishers/anthropic/models/claude-sonnet-4@20250514:rawPredict",
          {"anthropic_version": "vertex-2023-10-16", "max_tokens": 8, "messages": [{"role": "user", "content": "ping"}]}),
         (f"/projects/proj/locations/{region}/endpoints/openapi/chat/completions",
          {"model": "google/gemini-2.0-flash", "messages": [{"role": "user", "content": "ping"}]})]
while time.time() < end and not os.path.exists(stop):
    for path, body in calls:
        try:
            req = urllib.request.Request(base + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=10) as r:
                ok += r.status == 200
        except urllib.error.HTTPError as e:
            bad += 1
            print(f"{path}: HTTP {e.code} {e.read()[:200]!r}")
        except OSError as e:
            bad += 1
            print(f"{path}: {type(e).__name__}: {e}")
    time.sleep(0.1)
print(f"ok={ok} bad={bad}")
PY
load_pid=$!
PIDS+=("$load_pid")
mkdir -p "$WORK/home" "$WORK/ws"
started=$SECONDS
runs=0
while ((runs < 3 || SECONDS - started < 3 * LIFETIME_S)) && ((runs < 15)); do
    code=0
    (cd "$WORK/ws" && timeout 90 env -u ANTHROPIC_API_KEY -u ANTHROPIC_AUTH_TOKEN -u GOOGLE_APPLICATION_CREDENTIALS \
        HOME="$WORK/home" XDG_CONFIG_HOME="$WORK/home/.config" CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 \
        DISABLE_AUTOUPDATER=1 DISABLE_TELEMETRY=1 NO_COLOR=1 CLAUDE_CODE_USE_VERTEX=1 ANTHROPIC_VERTEX_PROJECT_ID=proj \
        "${STEP_ENV[@]}" "$CLAUDE" -p "say hi" >"$WORK/out-$runs.txt" 2>"$WORK/err-$runs.txt") || code=$?
    [[ $code -eq 0 ]] || fail "claude (Vertex mode, run $runs) exited $code: $(tail -c 600 "$WORK/out-$runs.txt" "$WORK/err-$runs.txt")"
    grep -q "pong from vertex" "$WORK/out-$runs.txt" || fail "run $runs printed no answer: $(head -c 400 "$WORK/out-$runs.txt")"
    runs=$((runs + 1))
done
elapsed=$((SECONDS - started))
http get "http://127.0.0.1:$port/status" "$key" >"$WORK/status.json"
http get "http://127.0.0.1:$port/metrics" >"$WORK/metrics.txt"
touch "$WORK/stop"
wait "$load_pid" || true
# The job ends: the runner stops the proxy.
kill "$pid"
load="$(tail -1 "$WORK/load.txt")"
[[ "$load" =~ ^ok=([0-9]+)\ bad=0$ && ${BASH_REMATCH[1]} -gt 0 ]] || fail "the steady client: $(tail -5 "$WORK/load.txt")"

kind="$(json "$WORK/status.json" 'd["providers"][0]["source_kind"]')"
acq="$(json "$WORK/status.json" 'd["providers"][0]["acquisitions"]')"
[[ "$kind" == google ]] || fail "the proxy's source is $kind"
[[ "$(fstats 'd.get("refused", 0)')" -eq 0 && "$(fstats 'd.get("upstream_rejected", 0)')" -eq 0 ]] ||
    fail "the fakes refused: $(fstats 'd["failures"]')"
oidc="$(fstats 'd.get("oidc", 0)')"
sts="$(fstats 'd.get("sts", 0)')"
iam="$(fstats 'd.get("impersonate", 0)')"
vertex="$(fstats 'd.get("vertex_claude", 0)')"
accepted="$(fstats 'd.get("upstream_accepted", 0)')"
[[ "$acq" -ge 3 && "$sts" -ge 3 && "$iam" -ge 3 && "$oidc" -ge "$sts" ]] ||
    fail "$acq acquisitions, $oidc OIDC tokens, $sts STS exchanges, $iam generateAccessToken in ${elapsed}s of ${LIFETIME_S}s tokens"
[[ "$vertex" -gt "$runs" ]] || fail "only $vertex Claude-on-Vertex calls reached the upstream"
for s in 401 403 500 502 503; do
    [[ "$(http metric "$WORK/metrics.txt" tokenrelay_responses_total status=$s)" -eq 0 ]] || fail "the proxy answered $s"
done
# Every token the fakes issue contains TKFSECRET: none may show up in a step file or a log.
if grep -rqF TKFSECRET "$WORK/step1.log" "$runner/env" "$runner/output" "$runner/temp/tokenrelay.log" \
    "$WORK/status.json" "$WORK/metrics.txt" "$WORK"/out-*.txt "$WORK"/err-*.txt; then
    fail "a Google token leaked into a step file or log"
fi
# Nor the job's OIDC request token (the config the step wrote names no secret at all).
if grep -rqF -- "$(json "$C" 'd["oidc_request_token"]')" "$WORK/step1.log" "$runner/env" "$runner/output" "$runner/temp"; then
    fail "the Actions OIDC request token leaked into a step file, the config or the proxy's log"
fi
summary "composite action, provider gcp (simulated Actions, fake STS + IAM Credentials, Vertex-shaped upstream): claude (Vertex mode) $runs runs + steady client $load over ${elapsed}s, $acq acquisitions of ${LIFETIME_S}s tokens ($oidc OIDC, $sts STS, $iam generateAccessToken), $accepted upstream calls accepted, 0 refused, no token in logs"
