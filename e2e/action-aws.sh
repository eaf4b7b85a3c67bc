#!/usr/bin/env bash
# The composite action (.github/actions/tokenrelay) with `provider: aws`, end to end in a
# simulated Actions runner, against fixtures/fake-aws.py:
#   - the job's OIDC endpoint (ACTIONS_ID_TOKEN_REQUEST_URL/TOKEN) mints a JWT for the audience
#     asked for;
#   - STS is the real moto (moto[server], pinned in lib.sh, its own WSGI app run in the fixture's
#     process) behind a check of what moto skips and real STS does: the web identity token's
#     signature, issuer, expiry and audience (sts.amazonaws.com). moto issues the role
#     credentials, with the DurationSeconds the action's role-duration-seconds asked for;
#   - Bedrock is a fake that accepts a request only when its SigV4 signature is right for
#     credentials moto issued (looked up in moto's own state: secret, session token, expiry),
#     scoped to the region and service `bedrock`, recomputed by botocore's signer. This choice
#     (moto's state + botocore) is the most faithful here: moto has no bedrock-runtime to verify
#     signatures itself, and no fake STS stands in for moto. First the fakes are checked against
#     the reference client, boto3/botocore: a boto3 AssumeRoleWithWebIdentity works, a
#     botocore-signed call is accepted; a changed body, a wrong region or service, expired
#     credentials and a wrong audience are refused.
# The action's start.sh runs as a step (AWS_ENDPOINT_URL_STS points STS at moto, as it would at
# a VPC endpoint); the next step runs Claude Code (pinned in lib.sh) in Bedrock mode with only
# what the action exported (ANTHROPIC_BEDROCK_BASE_URL, CLAUDE_CODE_SKIP_BEDROCK_AUTH=1,
# AWS_REGION) plus CLAUDE_CODE_USE_BEDROCK=1, several times across credentials that live 4 s,
# while a client (skip-auth shape: unsigned) calls /model/ID/invoke every 0.1 s: zero failures.
# No moto secret or session token may reach the step's output, GITHUB_ENV/GITHUB_OUTPUT or the
# proxy's log; the local key is masked.
set -euo pipefail
# shellcheck source=e2e/lib.sh
source "$(dirname "$0")/lib.sh"
e2e_init action-aws
ACTION_DIR="$ROOT/.github/actions/tokenrelay"
ensure_moto
ensure_claude
CLAUDE="$TOOLS/claude/node_modules/.bin/claude"
PY="$TOOLS/venv/bin/python"

LIFETIME_S=4
REGION="us-west-2"
ROLE="arn:aws:iam::123456789012:role/bedrock-e2e"
"$PY" "$FIX/fake-aws.py" "$WORK" "$REGION" 2>"$WORK/fake.log" &
PIDS+=($!)
for ((i = 0; i < 150; i++)); do
    [[ -s "$WORK/aws.json" ]] && break
    sleep 0.1
done
[[ -s "$WORK/aws.json" ]] || fail "fake-aws did not start: $(tail -5 "$WORK/fake.log")"
aws() { json "$WORK/aws.json" "d[\"$1\"]"; }
BEDROCK="$(aws bedrock_url)"
fstats() { http get "$BEDROCK/__stats" | json - "$1"; }

# 1. The fakes against boto3/botocore (the reference STS client and SigV4 signer).
"$PY" - "$WORK/aws.json" "$REGION" "$ROLE" >"$WORK/reference.txt" 2>&1 <<'PY' || fail "the fakes disagree with boto3/botocore: $(tail -5 "$WORK/reference.txt")"
import json, sys, time, urllib.error, urllib.request
import boto3, botocore.config, botocore.exceptions
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
c, region, role = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3]
def oidc(aud):
    req = urllib.request.Request(f"{c['oidc_url']}?audience={aud}", headers={"Authorization": "Bearer " + c["oidc_request_token"]})
    return json.load(urllib.request.urlopen(req, timeout=5))["value"]
sts = boto3.client("sts", endpoint_url=c["sts_url"], region_name=region, aws_access_key_id="unused", aws_secret_access_key="unused",
                   config=botocore.config.Config(parameter_validation=False))  # for DurationSeconds=1 (real STS: >= 900)
cr = sts.assume_role_with_web_identity(RoleArn=role, RoleSessionName="reference", WebIdentityToken=oidc("sts.amazonaws.com"),
                                       DurationSeconds=900)["Credentials"]
try:
    sts.assume_role_with_web_identity(RoleArn=role, RoleSessionName="reference", WebIdentityToken=oidc("api://AzureADTokenExchange"))
    sys.exit("STS accepted a token for another audience")
except botocore.exceptions.ClientError as e:
    assert e.response["Error"]["Code"] == "InvalidIdentityToken", e
creds = Credentials(cr["AccessKeyId"], cr["SecretAccessKey"], cr["SessionToken"])
body = b'{"anthropic_version":"bedrock-2023-05-31","max_tokens":8,"messages":[{"role":"user","content":"ping"}]}'
def call(sign_region, sent_body, creds=creds, service="bedrock"):
    a = AWSRequest(method="POST", url=c["bedrock_url"] + "/model/anthropic.claude-3-5-haiku-20241022-v1%3A0/invoke",
                   data=body, headers={"Content-Type": "application/json"})
    SigV4Auth(creds, service, sign_region).add_auth(a)
    p = a.prepare()
    try:
        with urllib.request.urlopen(urllib.request.Request(p.url, data=sent_body, headers=dict(p.headers), method="POST"), timeout=5) as r:
            return r.status, ""
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("x-amzn-ErrorType", "").split(":")[0]
short = sts.assume_role_with_web_identity(RoleArn=role, RoleSessionName="reference", WebIdentityToken=oidc("sts.amazonaws.com"),
                                          DurationSeconds=1)["Credentials"]
time.sleep(1.5)
expired = Credentials(short["AccessKeyId"], short["SecretAccessKey"], short["SessionToken"])
got = [call(region, body), call(region, body.replace(b"ping", b"pong")), call("eu-west-1", body),
       call(region, body, service="execute-api"), call(region, body, creds=expired)]
want = [(200, ""), (403, "InvalidSignatureException"), (403, "InvalidSignatureException"),
        (403, "InvalidSignatureException"), (403, "ExpiredTokenException")]
print(got)
sys.exit(0 if got == want else f"botocore-signed calls: got {got}, want {want}")
PY
note "fakes vs boto3/botocore: STS issues and refuses as real STS, botocore's signature accepted, a changed body, wrong region, wrong service and expired credentials refused"
http post "$BEDROCK/__reset" >/dev/null

# 2. The action's step in a simulated runner: the job's OIDC variables, then the inputs of
# `uses: ./.github/actions/tokenrelay` `with:`.
action_step "provider aws" ACTIONS_ID_TOKEN_REQUEST_URL="$(aws oidc_url)?api-version=2.0" \
    ACTIONS_ID_TOKEN_REQUEST_TOKEN="$(aws oidc_request_token)" AWS_ENDPOINT_URL_STS="$(aws sts_url)" \
    -AWS_ACCESS_KEY_ID -AWS_SECRET_ACCESS_KEY -AWS_SESSION_TOKEN -AWS_PROFILE \
    INPUT_PROVIDER=aws INPUT_ROLE_ARN="$ROLE" INPUT_REGION="$REGION" INPUT_ROLE_DURATION_SECONDS="$LIFETIME_S" \
    INPUT_UPSTREAM="$BEDROCK"
# A bad role-duration-seconds fails the step with one ::error:: line, before anything starts.
code=0
out="$(env GITHUB_ENV="$WORK/bad.env" GITHUB_OUTPUT="$WORK/bad.out" GITHUB_ACTION_PATH="$ACTION_DIR" \
    ACTIONS_ID_TOKEN_REQUEST_URL=http://127.0.0.1:9/ ACTIONS_ID_TOKEN_REQUEST_TOKEN=x INPUT_PROVIDER=aws \
    INPUT_ROLE_ARN="$ROLE" INPUT_REGION="$REGION" INPUT_ROLE_DURATION_SECONDS=1h timeout 20 bash "$ACTION_DIR/start.sh" 2>&1)" || code=$?
[[ $code -ne 0 && "$out" == "::error::tokenrelay (aws): role-duration-seconds must be a number of seconds (got '1h')" ]] ||
    fail "role-duration-seconds=1h: exit $code, $out"
key="$(sed -n 's/^TOKENRELAY_LOCAL_KEY=//p' "$runner/env")"
grep -qxF "::add-mask::$key" "$WORK/step1.log" || fail "the local key was not masked"
for v in ANTHROPIC_BEDROCK_BASE_URL=http://127.0.0.1:$port CLAUDE_CODE_SKIP_BEDROCK_AUTH=1 AWS_REGION=$REGION; do
    grep -qxF "$v" "$runner/env" || fail "the action did not export $v"
done

# 3. The next step: Claude Code in Bedrock mode, several runs across credential lifetimes, with
# a steady client beside it.
mapfile -t STEP_ENV <"$runner/env"
base="$(sed -n 's/^ANTHROPIC_BEDROCK_BASE_URL=//p' "$runner/env")"
python3 - "$base" "$WORK/stop" >"$WORK/load.txt" 2>&1 <<'PY' &
import json, os, sys, time, urllib.error, urllib.request
base, stop, ok, bad, end = sys.argv[1], sys.argv[2], 0, 0, time.time() + 60
body = json.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 8, "messages": [{"role": "user", "content": "ping"}]}).encode()
while time.time() < end and not os.path.exists(stop):
    try:
        req = urllib.request.Request(base + "/model/anthropic.claude-3-5-haiku-20241022-v1%3A0/invoke", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            ok += r.status == 200
    except urllib.error.HTTPError as e:
        bad += 1
        print(f"HTTP {e.code} {e.read()[:200]!r}")
    except OSError as e:
        bad += 1
        print(f"{type(e).__name__}: {e}")
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
    (cd "$WORK/ws" && timeout 90 env -u ANTHROPIC_API_KEY -u ANTHROPIC_AUTH_TOKEN -u AWS_ACCESS_KEY_ID \
        -u AWS_SECRET_ACCESS_KEY -u AWS_SESSION_TOKEN -u AWS_PROFILE -u AWS_ENDPOINT_URL_STS \
        HOME="$WORK/home" XDG_CONFIG_HOME="$WORK/home/.config" CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 \
        DISABLE_AUTOUPDATER=1 DISABLE_TELEMETRY=1 NO_COLOR=1 CLAUDE_CODE_USE_BEDROCK=1 "${STEP_ENV[@]}" \
        "$CLAUDE" -p "say hi" >"$WORK/out-$runs.txt" 2>"$WORK/err-$runs.txt") || code=$?
    [[ $code -eq 0 ]] || fail "claude (Bedrock mode, run $runs) exited $code: $(tail -c 600 "$WORK/out-$runs.txt" "$WORK/err-$runs.txt")"
    grep -q "pong from bedrock" "$WORK/out-$runs.txt" || fail "run $runs printed no answer: $(head -c 400 "$WORK/out-$runs.txt")"
    runs=$((runs + 1))
done
elapsed=$((SECONDS - started))
http get "$base/status" "$key" >"$WORK/status.json"
http get "$base/metrics" >"$WORK/metrics.txt"
touch "$WORK/stop"
wait "$load_pid" || true
# The job ends: the runner stops the proxy.
kill "$pid"
load="$(tail -1 "$WORK/load.txt")"
[[ "$load" =~ ^ok=([0-9]+)\ bad=0$ && ${BASH_REMATCH[1]} -gt 0 ]] || fail "the steady client: $(tail -5 "$WORK/load.txt")"

kind="$(json "$WORK/status.json" 'd["providers"][0]["source_kind"]')"
acq="$(json "$WORK/status.json" 'd["providers"][0]["acquisitions"]')"
[[ "$kind" == aws-web-identity ]] || fail "the proxy's source is $kind"
refused="$(fstats 'd["bedrock_refused"]')"
ok="$(fstats 'd["bedrock_ok"]')"
[[ "$refused" -eq 0 ]] || fail "Bedrock refused $refused requests: $(fstats 'd["failures"]')"
[[ "$(fstats 'd["sts_refused"]')" -eq 0 ]] || fail "STS refused: $(fstats 'd["failures"]')"
sts_ok="$(fstats 'd["sts_ok"]')"
[[ "$acq" -ge 3 && "$sts_ok" -ge "$acq" ]] || fail "only $acq acquisitions ($sts_ok AssumeRoleWithWebIdentity) in ${elapsed}s of ${LIFETIME_S}s credentials"
[[ "$(fstats 'd["sts_audiences"]')" == '["sts.amazonaws.com"]' ]] || fail "STS saw audiences $(fstats 'd["sts_audiences"]')"
[[ "$(fstats 'd["sts_roles"]')" == "[\"$ROLE tokenrelay\"]" ]] || fail "STS saw roles/sessions $(fstats 'd["sts_roles"]')"
[[ "$(fstats 'd["sts_durations"]')" == "[\"$LIFETIME_S\"]" ]] || fail "STS saw DurationSeconds $(fstats 'd["sts_durations"]')"
[[ "$(fstats 'd["scopes"]')" == "[\"$REGION/bedrock\"]" ]] || fail "SigV4 scopes $(fstats 'd["scopes"]')"
fstats 'd["bedrock_paths"]' | grep -q "invoke-with-response-stream" || fail "Claude Code's streaming call did not arrive: $(fstats 'd["bedrock_paths"]')"
for s in 401 403 500 502 503; do
    [[ "$(http metric "$WORK/metrics.txt" tokenrelay_responses_total status=$s)" -eq 0 ]] || fail "the proxy answered $s"
done
# Nothing moto issued may show up in the step's output, its exported files or the proxy's log.
[[ -s "$WORK/aws-issued.txt" ]] || fail "no issued credentials recorded"
if grep -rqF -f "$WORK/aws-issued.txt" "$WORK/step1.log" "$runner/env" "$runner/output" "$runner/temp/tokenrelay.log" \
    "$WORK/status.json" "$WORK/metrics.txt" "$WORK"/out-*.txt "$WORK"/err-*.txt; then
    fail "an AWS secret or session token leaked into a step file or log"
fi
# Nor the job's OIDC request token (the config the step wrote names no secret at all).
if grep -rqF -- "$(aws oidc_request_token)" "$WORK/step1.log" "$runner/env" "$runner/output" "$runner/temp"; then
    fail "the Actions OIDC request token leaked into a step file, the config or the proxy's log"
fi
summary "composite action, provider aws (simulated Actions, moto STS, SigV4-checking Bedrock): claude (Bedrock mode) $runs runs + steady client $load over ${elapsed}s, $acq acquisitions of ${LIFETIME_S}s credentials, $ok signed calls accepted, 0 refused, no secret in logs"
