#!/usr/bin/env bash
# The body of the tokenrelay composite action (action.yml passes its inputs as INPUT_*).
# Writes a github-oidc-entra config, starts `tokenrelay serve` in the background, waits until
# it holds a token, and exports for later steps:
#   TOKENRELAY_URL, TOKENRELAY_PID, TOKENRELAY_LOCAL_KEY (masked),
#   COPILOT_PROVIDER_BASE_URL, COPILOT_PROVIDER_TYPE=azure, COPILOT_PROVIDER_API_KEY,
#   AZURE_OPENAI_ENDPOINT, AZURE_OPENAI_API_KEY, OPENAI_BASE_URL (…/openai/v1), OPENAI_API_KEY.
# The API keys are the proxy's random local key: the proxy checks it, strips it and sends the
# Entra token instead. Runs outside Actions too, given the same variables (e2e/github-actions.sh).
set -euo pipefail

: "${INPUT_UPSTREAM:?input upstream is required}"
: "${GITHUB_ENV:?not running in GitHub Actions (GITHUB_ENV is not set)}"
: "${GITHUB_OUTPUT:?not running in GitHub Actions (GITHUB_OUTPUT is not set)}"
if [[ -z "${ACTIONS_ID_TOKEN_REQUEST_URL:-}" || -z "${ACTIONS_ID_TOKEN_REQUEST_TOKEN:-}" ]]; then
    echo "::error::tokenrelay: no GitHub OIDC token available; give the job 'permissions: id-token: write'"
    exit 1
fi
tenant="${INPUT_TENANT_ID:-${AZURE_TENANT_ID:-}}"
client="${INPUT_CLIENT_ID:-${AZURE_CLIENT_ID:-}}"
[[ -n "$tenant" ]] || { echo "::error::tokenrelay: set the tenant-id input or AZURE_TENANT_ID"; exit 1; }
[[ -n "$client" ]] || { echo "::error::tokenrelay: set the client-id input or AZURE_CLIENT_ID"; exit 1; }
listen="${INPUT_LISTEN:-127.0.0.1:8787}"
timeout_s="${INPUT_READY_TIMEOUT:-60}"
tmp="${RUNNER_TEMP:-${TMPDIR:-/tmp}}"

bin="$(bash "$GITHUB_ACTION_PATH/install.sh")"

# TOML basic strings: escape backslashes and quotes.
toml() {
    local s="${1//\\/\\\\}"
    printf '"%s"' "${s//\"/\\\"}"
}
config="$tmp/tokenrelay-action.toml"
{
    echo "listen = $(toml "$listen")"
    echo "[[provider]]"
    echo 'name = "azure"'
    echo "upstream = $(toml "$INPUT_UPSTREAM")"
    echo "inject = $(toml "${INPUT_INJECT:-bearer}")"
    echo "scope = $(toml "${INPUT_SCOPE:-https://cognitiveservices.azure.com/.default}")"
    echo "[provider.source]"
    echo 'kind = "github-oidc-entra"'
    echo "tenant_id = $(toml "$tenant")"
    echo "client_id = $(toml "$client")"
    echo "audience = $(toml "${INPUT_AUDIENCE:-api://AzureADTokenExchange}")"
    if [[ -n "${INPUT_AUTHORITY_HOST:-}" ]]; then
        echo "authority_host = $(toml "$INPUT_AUTHORITY_HOST")"
    fi
} >"$config"

key="trl-$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')"
echo "::add-mask::$key"
log="$tmp/tokenrelay.log"
TOKENRELAY_LOCAL_KEY="$key" nohup "$bin" serve --config "$config" \
    --local-key-env TOKENRELAY_LOCAL_KEY --log-format json >"$log" 2>&1 &
pid=$!
url="http://$listen"

probe() {
    if command -v curl >/dev/null; then
        curl -fsS -o /dev/null --max-time 2 "$1"
    else
        python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "$1"
    fi
}

ready=""
for ((i = 0; i < timeout_s * 5; i++)); do
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "::error::tokenrelay exited: $(tail -n 5 "$log")"
        exit 1
    fi
    if probe "$url/readyz" 2>/dev/null; then
        ready=1
        break
    fi
    sleep 0.2
done
if [[ -z "$ready" ]]; then
    echo "::error::tokenrelay: no token after ${timeout_s}s: $(tail -n 5 "$log")"
    kill "$pid" 2>/dev/null || true
    exit 1
fi

{
    echo "TOKENRELAY_URL=$url"
    echo "TOKENRELAY_PID=$pid"
    echo "TOKENRELAY_LOCAL_KEY=$key"
    echo "COPILOT_PROVIDER_BASE_URL=$url"
    echo "COPILOT_PROVIDER_TYPE=azure"
    echo "COPILOT_PROVIDER_API_KEY=$key"
    echo "AZURE_OPENAI_ENDPOINT=$url"
    echo "AZURE_OPENAI_API_KEY=$key"
    echo "OPENAI_BASE_URL=$url/openai/v1"
    echo "OPENAI_API_KEY=$key"
} >>"$GITHUB_ENV"
{
    echo "base-url=$url"
    echo "pid=$pid"
    echo "log-file=$log"
} >>"$GITHUB_OUTPUT"
echo "tokenrelay: ready at $url (pid $pid), upstream $INPUT_UPSTREAM, log $log"
