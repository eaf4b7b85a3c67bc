#!/usr/bin/env bash
# Google Application Default Credentials (`kind = "google"`) against loopback fakes of Google's
# OAuth token endpoint, STS, IAM Credentials and metadata server (fixtures/fake-clouds.py), with
# the real google-auth (PyPI, pinned) pointed at the same fakes through the same files, so a fake
# that drifts from the protocol fails here. For each credential type:
#   - google-auth obtains a token;
#   - `tokenrelay token` and `tokenrelay check` obtain one;
#   - `tokenrelay serve` keeps a client's requests to a Vertex-shaped upstream (OpenAI-compatible
#     endpoint and Claude on Vertex) at 200 across several 3-second token lifetimes;
#   - refusals (bad file, wrong audience, 403 from IAM) are one line naming the source and field.
set -euo pipefail
# shellcheck source=e2e/lib.sh
source "$(dirname "$0")/lib.sh"
e2e_init google

GOOGLE_AUTH_VERSION="2.62.2" # PyPI google-auth (with requests)
REQUESTS_VERSION="2.34.2"
venv="$TOOLS/venv-google"
stamp="$venv/.installed-google-auth-$GOOGLE_AUTH_VERSION"
if [[ ! -f "$stamp" ]]; then
    note "installing google-auth==$GOOGLE_AUTH_VERSION into $venv"
    python3 -m venv "$venv" || fail "python3 -m venv failed"
    timeout 300 "$venv/bin/pip" install --quiet "google-auth==$GOOGLE_AUTH_VERSION" \
        "requests==$REQUESTS_VERSION" >"$TOOLS/venv-google-install.log" 2>&1 || {
        tail -20 "$TOOLS/venv-google-install.log" >&2
        fail "pip install google-auth failed"
    }
    touch "$stamp"
fi
PY="$venv/bin/python"
command -v openssl >/dev/null || fail "openssl is needed to make the test service account key"

LIFETIME_S=3
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$WORK/sa.key.pem" 2>/dev/null
openssl pkey -in "$WORK/sa.key.pem" -pubout -out "$WORK/sa.pub.pem" 2>/dev/null
"$PY" "$FIX/fake-clouds.py" "$WORK" "$LIFETIME_S" 2>"$WORK/fake.log" &
PIDS+=($!)
for ((i = 0; i < 100; i++)); do
    [[ -s "$WORK/clouds.json" ]] && break
    sleep 0.1
done
[[ -s "$WORK/clouds.json" ]] || fail "fake-clouds did not start: $(cat "$WORK/fake.log")"
C="$WORK/clouds.json"
URL="$(json "$C" 'd["url"]')"
HOSTPORT="${URL#http://}"
REQ_TOKEN="$(json "$C" 'd["oidc_request_token"]')"
AUD="$(json "$C" 'd["audience"]')"
WIP="$(json "$C" 'd["wip"]')"
SA="$(json "$C" 'd["sa"]')"
IMP_URL="$URL/iam/v1/projects/-/serviceAccounts/$SA:generateAccessToken"

# The credential files, in the shapes gcloud, the console and google-github-actions/auth write.
"$PY" - "$WORK" "$URL" "$C" <<'PY'
import json, os, sys, urllib.request
os.umask(0o077)  # credential files as gcloud writes them: private to the user
work, url, c = sys.argv[1], sys.argv[2], json.load(open(sys.argv[3]))
def w(name, obj):
    with open(f"{work}/{name}.json", "w") as f:
        json.dump(obj, f)
user = dict(c["user"], type="authorized_user", token_uri=url + "/oauth/token", quota_project_id="proj")
w("authorized_user", user)
w("service_account", {"type": "service_account", "project_id": "proj", "private_key_id": "k1",
   "private_key": open(f"{work}/sa.key.pem").read(), "client_email": c["sa"], "client_id": "1",
   "auth_uri": "https://accounts.google.com/o/oauth2/auth", "token_uri": url + "/oauth/token"})
imp = f"{url}/iam/v1/projects/-/serviceAccounts/{c['sa']}:generateAccessToken"
oidc_aud = "https://iam.googleapis.com/" + c["wip"]
# a subject token file as a Kubernetes/CI job would mount it (JSON with the token in "value")
req = urllib.request.Request(f"{url}/oidc?audience={oidc_aud}", headers={"Authorization": "Bearer " + c["oidc_request_token"]})
open(f"{work}/subject.json", "w").write(urllib.request.urlopen(req, timeout=5).read().decode())
ext = {"type": "external_account", "audience": c["audience"], "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
       "token_url": url + "/sts/v1/token"}
w("external_file", dict(ext, credential_source={"file": f"{work}/subject.json", "format": {"type": "json", "subject_token_field_name": "value"}}))
# google-github-actions/auth's file: the Actions OIDC endpoint as credential_source.url
w("external_url", dict(ext, service_account_impersonation_url=imp,
   credential_source={"url": f"{url}/oidc?api-version=2.0&audience={oidc_aud}",
                      "headers": {"Authorization": "Bearer " + c["oidc_request_token"]},
                      "format": {"type": "json", "subject_token_field_name": "value"}}))
w("impersonated", {"type": "impersonated_service_account", "service_account_impersonation_url": imp, "delegates": [],
   "source_credentials": user})
# refusal cases
w("bad_missing", {"type": "external_account", "audience": c["audience"], "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
   "token_url": url + "/sts/v1/token", "credential_source": {"format": {"type": "json", "subject_token_field_name": "value"}}})
w("bad_audience", dict(ext, audience=c["audience"].replace("providers/github", "providers/other"),
   credential_source={"file": f"{work}/subject.json", "format": {"type": "json", "subject_token_field_name": "value"}}))
w("bad_iam", dict(ext, service_account_impersonation_url=imp.replace(c["sa"], "other@proj.iam.gserviceaccount.com"),
   credential_source={"file": f"{work}/subject.json", "format": {"type": "json", "subject_token_field_name": "value"}}))
PY

TYPES=(authorized_user service_account external_file external_url impersonated)
# 1. the real google-auth obtains a token from the fakes with each file, and from the metadata server
ga_summary=""
for t in "${TYPES[@]}"; do
    out="$(env -u GCE_METADATA_HOST GOOGLE_APPLICATION_CREDENTIALS="$WORK/$t.json" \
        E2E_GOOGLE_OAUTH_TOKEN_URI="$URL/oauth/token" E2E_GOOGLE_CRM_URL="$URL/crm/v1/projects/" \
        E2E_GOOGLE_IAM_URL="$URL/iam" \
        timeout 60 "$PY" "$FIX/google_auth_check.py" 2>&1)" || fail "google-auth with $t: $out"
    ga_summary+=" $t"
done
out="$(env -u GOOGLE_APPLICATION_CREDENTIALS HOME="$WORK/nohome" GCE_METADATA_HOST="$HOSTPORT" \
    GCE_METADATA_IP="$HOSTPORT" timeout 60 "$PY" "$FIX/google_auth_check.py" 2>&1)" ||
    fail "google-auth with the metadata server: $out"
[[ "$out" == "ok credentials meta" ]] || fail "google-auth metadata: $out"
note "google-auth got tokens with:$ga_summary metadata"

# 2. tokenrelay token and check, per type (one config, a provider per type)
cfg="$WORK/tokenrelay.toml"
{
    echo 'listen = "127.0.0.1:0"'
    for t in "${TYPES[@]}"; do
        printf '[[provider]]\nname = "%s"\nupstream = "%s"\npath_prefix = "/%s"\n' "$t" "$URL" "$t"
        printf '[provider.source]\nkind = "google"\ncredentials_file = "%s"\n' "$WORK/$t.json"
        # authorized_user refresh tokens go to Google's endpoint unless the table says otherwise
        printf 'token_uri = "%s"\niam_credentials_url = "%s"\n' "$URL/oauth/token" "$URL/iam"
    done
    printf '[[provider]]\nname = "metadata"\nupstream = "%s"\npath_prefix = "/metadata"\n' "$URL"
    printf '[provider.source]\nkind = "google"\n'
    printf '[[provider]]\nname = "wip"\nupstream = "%s"\npath_prefix = "/wip"\n' "$URL"
    printf '[provider.source]\nkind = "google"\nworkload_identity_provider = "%s"\n' "$WIP"
    printf 'service_account = "%s"\ntoken_url = "%s"\niam_credentials_url = "%s"\n' "$SA" "$URL/sts/v1/token" "$URL/iam"
} >"$cfg"
ALL=("${TYPES[@]}" metadata wip)
tr_env=(env -u GOOGLE_APPLICATION_CREDENTIALS -u HTTPS_PROXY -u HTTP_PROXY -u ALL_PROXY HOME="$WORK/nohome"
    GCE_METADATA_HOST="$HOSTPORT" ACTIONS_ID_TOKEN_REQUEST_URL="$URL/oidc?api-version=2.0"
    ACTIONS_ID_TOKEN_REQUEST_TOKEN="$REQ_TOKEN" TOKENRELAY_CACHE_DIR="$WORK/cache")
for p in "${ALL[@]}"; do
    proxy=()
    # the metadata server is never reached through a proxy: give it a dead one
    [[ "$p" == metadata ]] && proxy=(HTTP_PROXY="http://127.0.0.1:9" http_proxy="http://127.0.0.1:9" NO_PROXY="" no_proxy="")
    tok="$("${tr_env[@]}" "${proxy[@]}" timeout 30 "$TOKENRELAY" token --config "$cfg" --provider "$p" \
        2>"$WORK/token-$p.err")" || fail "tokenrelay token ($p): $(cat "$WORK/token-$p.err")"
    [[ "$tok" == TKFSECRET-* ]] || fail "tokenrelay token ($p) printed no token from the fakes: $(cat "$WORK/token-$p.err")"
done
"${tr_env[@]}" timeout 60 "$TOKENRELAY" check --config "$cfg" >"$WORK/check.txt" 2>&1 ||
    fail "tokenrelay check: $(cat "$WORK/check.txt")"
for p in "${ALL[@]}"; do
    grep -q "$p" "$WORK/check.txt" || fail "check does not list $p: $(cat "$WORK/check.txt")"
done
grep -q TKFSECRET "$WORK/check.txt" && fail "check printed a token"
note "tokenrelay token + check: ${#ALL[@]} providers (${ALL[*]})"

# 3. serve: requests to the Vertex-shaped upstream through every provider, over several lifetimes
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
sed -i "s/^listen = .*/listen = \"127.0.0.1:$port\"/" "$cfg"
"${tr_env[@]}" "$TOKENRELAY" serve --config "$cfg" >"$WORK/serve.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$port/readyz"
http post "$URL/__reset" >/dev/null
"$PY" - "http://127.0.0.1:$port" "$LIFETIME_S" "${ALL[@]}" >"$WORK/client.txt" 2>&1 <<'PY' || fail "client through serve: $(tail -5 "$WORK/client.txt")"
import json, sys, time, urllib.request, urllib.error
base, life, names = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
paths = ["/v1/projects/proj/locations/us-central1/endpoints/openapi/chat/completions",
         "/v1/projects/proj/locations/us-east5/publishers/anthropic/models/claude-sonnet-4@20250514:rawPredict"]
ok = bad = 0
end = time.time() + 3 * life + 1
while time.time() < end:
    for n in names:
        for p in paths:
            body = json.dumps({"model": "google/gemini-2.0-flash", "anthropic_version": "vertex-2023-10-16",
                               "max_tokens": 8, "messages": [{"role": "user", "content": "ping"}]}).encode()
            req = urllib.request.Request(base + "/" + n + p, data=body, headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    ok += r.status == 200
            except urllib.error.HTTPError as e:
                bad += 1
                print(f"{n}{p}: HTTP {e.code} {e.read()[:200]!r}")
    time.sleep(0.25)
print(f"ok={ok} bad={bad}")
sys.exit(1 if bad or not ok else 0)
PY
result="$(tail -1 "$WORK/client.txt")"
st="$(http get "$URL/__stats")"
issued="$(echo "$st" | json - 'sum(v for k, v in d.items() if k.startswith("issued_"))')"
[[ "$issued" -ge $((3 * ${#ALL[@]})) ]] || fail "serve: only $issued tokens issued over 3 lifetimes: $st"
grep -q TKFSECRET "$WORK/serve.log" && fail "serve logged a token"
note "serve: $result across 3 lifetimes of ${LIFETIME_S}s, $issued tokens issued"
kill "${PIDS[-1]}" 2>/dev/null || true

# 4. refusals: one line, naming the source, the file and the field
refusal() { # NAME FILE WANT...
    local name="$1" file="$2"
    shift 2
    local rc=0 out
    out="$(env -u GOOGLE_APPLICATION_CREDENTIALS timeout 30 "$TOKENRELAY" token --no-cache \
        --config <(printf '[[provider]]\nname = "g"\n[provider.source]\nkind = "google"\ncredentials_file = "%s"\n' "$file") 2>&1)" || rc=$?
    [[ $rc -ne 0 ]] || fail "$name: tokenrelay token succeeded"
    [[ "$(printf '%s\n' "$out" | wc -l)" -eq 1 ]] || fail "$name: more than one line: $out"
    local w
    for w in "$@"; do
        [[ "$out" == *"$w"* ]] || fail "$name: the error does not say \"$w\": $out"
    done
    note "refusal ($name, exit $rc): $out"
}
refusal "bad file" "$WORK/bad_missing.json" "google source" "external_account" "bad_missing.json" "credential_source: missing file or url"
refusal "wrong audience" "$WORK/bad_audience.json" "google source (external_account" "audience //iam.googleapis.com/" "HTTP 400" "invalid_target"
refusal "403 from IAM" "$WORK/bad_iam.json" "google source (external_account" "service_account_impersonation_url" "HTTP 403" "PERMISSION_DENIED"
echo '{"type": "service_account"' >"$WORK/bad_json.json"
chmod 600 "$WORK/bad_json.json"
refusal "not JSON" "$WORK/bad_json.json" "google source" "bad_json.json: not a JSON credential file"

echo "PASS google: google-auth + tokenrelay token/check for ${#ALL[@]} credential kinds, serve $result, 4 refusals"
