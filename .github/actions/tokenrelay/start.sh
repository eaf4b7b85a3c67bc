#!/usr/bin/env bash
# The body of the tokenrelay composite action (action.yml passes its inputs as INPUT_*).
# Writes a config for the chosen provider (azure: github-oidc-entra; aws: aws-web-identity +
# SigV4; gcp: google with workload_identity_provider; anthropic: anthropic-federated), starts
# `tokenrelay serve` in the background, waits until it holds a credential, and exports for later
# steps TOKENRELAY_URL, TOKENRELAY_PID, TOKENRELAY_LOCAL_KEY (masked) and per provider:
#   azure:     COPILOT_PROVIDER_BASE_URL, COPILOT_PROVIDER_TYPE=azure, COPILOT_PROVIDER_API_KEY,
#              AZURE_OPENAI_ENDPOINT, AZURE_OPENAI_API_KEY, OPENAI_BASE_URL (…/openai/v1), OPENAI_API_KEY;
#   anthropic: ANTHROPIC_BASE_URL, ANTHROPIC_API_KEY, COPILOT_PROVIDER_BASE_URL,
#              COPILOT_PROVIDER_TYPE=anthropic, COPILOT_PROVIDER_API_KEY;
#   gcp:       ANTHROPIC_VERTEX_BASE_URL (…/v1), CLAUDE_CODE_SKIP_VERTEX_AUTH=1, CLOUD_ML_REGION
#              (set CLAUDE_CODE_USE_VERTEX=1 and ANTHROPIC_VERTEX_PROJECT_ID for Claude Code);
#   aws:       ANTHROPIC_BEDROCK_BASE_URL, CLAUDE_CODE_SKIP_BEDROCK_AUTH=1, AWS_REGION
#              (set CLAUDE_CODE_USE_BEDROCK=1 for Claude Code).
# The API keys are the proxy's random local key: the proxy checks it, strips it and sends the
# real credential instead. For gcp and aws the clients' skip-auth modes send no key at all, so
# the proxy runs without one (loopback only; foreign Host and cross-site Origin refused).
# Runs outside Actions too, given the same variables (e2e/github-actions.sh, e2e/anthropic-federated.sh).
set -euo pipefail

provider="${INPUT_PROVIDER:-azure}"
: "${GITHUB_ENV:?not running in GitHub Actions (GITHUB_ENV is not set)}"
: "${GITHUB_OUTPUT:?not running in GitHub Actions (GITHUB_OUTPUT is not set)}"
if [[ -z "${ACTIONS_ID_TOKEN_REQUEST_URL:-}" || -z "${ACTIONS_ID_TOKEN_REQUEST_TOKEN:-}" ]]; then
    echo "::error::tokenrelay: no GitHub OIDC token available; give the job 'permissions: id-token: write'"
    exit 1
fi
need() { # VALUE WHAT
    [[ -n "$1" ]] || { echo "::error::tokenrelay ($provider): set $2"; exit 1; }
}
case "$provider" in
azure)
    tenant="${INPUT_TENANT_ID:-${AZURE_TENANT_ID:-}}"
    client="${INPUT_CLIENT_ID:-${AZURE_CLIENT_ID:-}}"
    need "${INPUT_UPSTREAM:-}" "the upstream input"
    need "$tenant" "the tenant-id input or AZURE_TENANT_ID"
    need "$client" "the client-id input or AZURE_CLIENT_ID"
    ;;
aws)
    region="${INPUT_REGION:-${AWS_REGION:-${AWS_DEFAULT_REGION:-}}}"
    need "${INPUT_ROLE_ARN:-${AWS_ROLE_ARN:-}}" "the role-arn input or AWS_ROLE_ARN"
    need "$region" "the region input or AWS_REGION"
    if [[ -n "${INPUT_ROLE_DURATION_SECONDS:-}" && ! "$INPUT_ROLE_DURATION_SECONDS" =~ ^[1-9][0-9]{0,5}$ ]]; then
        echo "::error::tokenrelay (aws): role-duration-seconds must be a number of seconds (got '$INPUT_ROLE_DURATION_SECONDS')"
        exit 1
    fi
    ;;
gcp)
    need "${INPUT_WORKLOAD_IDENTITY_PROVIDER:-}" "the workload-identity-provider input"
    region="${INPUT_REGION:-us-central1}"
    ;;
anthropic)
    need "${INPUT_FEDERATION_RULE_ID:-${ANTHROPIC_FEDERATION_RULE_ID:-}}" "the federation-rule-id input or ANTHROPIC_FEDERATION_RULE_ID"
    need "${INPUT_ORGANIZATION_ID:-${ANTHROPIC_ORGANIZATION_ID:-}}" "the organization-id input or ANTHROPIC_ORGANIZATION_ID"
    need "${INPUT_SERVICE_ACCOUNT_ID:-${ANTHROPIC_SERVICE_ACCOUNT_ID:-}}" "the service-account-id input or ANTHROPIC_SERVICE_ACCOUNT_ID"
    ;;
*)
    echo "::error::tokenrelay: provider must be azure, aws, gcp or anthropic (got '$provider')"
    exit 1
    ;;
esac
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
opt() { # KEY VALUE: a TOML line when VALUE is set
    if [[ -n "$2" ]]; then echo "$1 = $(toml "$2")"; fi
}
{
    echo "listen = $(toml "$listen")"
    echo "[[provider]]"
    echo "name = $(toml "$provider")"
    case "$provider" in
    azure)
        echo "upstream = $(toml "$INPUT_UPSTREAM")"
        echo "inject = $(toml "${INPUT_INJECT:-bearer}")"
        echo "scope = $(toml "${INPUT_SCOPE:-https://cognitiveservices.azure.com/.default}")"
        echo "[provider.source]"
        echo 'kind = "github-oidc-entra"'
        echo "tenant_id = $(toml "$tenant")"
        echo "client_id = $(toml "$client")"
        echo "audience = $(toml "${INPUT_AUDIENCE:-api://AzureADTokenExchange}")"
        opt authority_host "${INPUT_AUTHORITY_HOST:-}"
        ;;
    aws)
        echo "upstream = $(toml "${INPUT_UPSTREAM:-https://bedrock-runtime.$region.amazonaws.com}")"
        echo "inject = $(toml "${INPUT_INJECT:-aws-sigv4}")"
        echo "aws_region = $(toml "$region")"
        echo "[provider.source]"
        echo 'kind = "aws-web-identity"'
        opt role_arn "${INPUT_ROLE_ARN:-}"
        echo "region = $(toml "$region")"
        opt role_session_name "${INPUT_ROLE_SESSION_NAME:-}"
        opt duration "${INPUT_ROLE_DURATION_SECONDS:+${INPUT_ROLE_DURATION_SECONDS}s}"
        echo "[provider.source.web_identity]"
        echo 'kind = "github-oidc"'
        echo "audience = $(toml "${INPUT_AUDIENCE:-sts.amazonaws.com}")"
        ;;
    gcp)
        echo "upstream = $(toml "${INPUT_UPSTREAM:-https://$region-aiplatform.googleapis.com}")"
        echo "inject = $(toml "${INPUT_INJECT:-bearer}")"
        opt scope "${INPUT_SCOPE:-}"
        echo "[provider.source]"
        echo 'kind = "google"'
        echo "workload_identity_provider = $(toml "$INPUT_WORKLOAD_IDENTITY_PROVIDER")"
        opt service_account "${INPUT_SERVICE_ACCOUNT:-}"
        opt token_url "${INPUT_TOKEN_URL:-}"
        opt iam_credentials_url "${INPUT_IAM_CREDENTIALS_URL:-}"
        if [[ -n "${INPUT_AUDIENCE:-}" ]]; then
            echo "[provider.source.subject]"
            echo 'kind = "github-oidc"'
            echo "audience = $(toml "$INPUT_AUDIENCE")"
        fi
        ;;
    anthropic)
        echo "upstream = $(toml "${INPUT_UPSTREAM:-https://api.anthropic.com}")"
        echo "inject = $(toml "${INPUT_INJECT:-anthropic-oauth}")"
        echo "[provider.source]"
        echo 'kind = "anthropic-federated"'
        opt federation_rule_id "${INPUT_FEDERATION_RULE_ID:-}"
        opt organization_id "${INPUT_ORGANIZATION_ID:-}"
        opt service_account_id "${INPUT_SERVICE_ACCOUNT_ID:-}"
        opt workspace_id "${INPUT_WORKSPACE_ID:-}"
        opt token_url "${INPUT_TOKEN_URL:-}"
        if [[ -n "${INPUT_AUDIENCE:-}" ]]; then
            echo "[provider.source.subject]"
            echo 'kind = "github-oidc"'
            echo "audience = $(toml "$INPUT_AUDIENCE")"
        fi
        ;;
    esac
} >"$config"

key="trl-$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')"
echo "::add-mask::$key"
log="$tmp/tokenrelay.log"
key_args=(--local-key-env TOKENRELAY_LOCAL_KEY)
case "$provider" in gcp | aws) key_args=() ;; esac
TOKENRELAY_LOCAL_KEY="$key" nohup "$bin" serve --config "$config" \
    "${key_args[@]}" --log-format json >"$log" 2>&1 &
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
    case "$provider" in
    azure)
        echo "COPILOT_PROVIDER_BASE_URL=$url"
        echo "COPILOT_PROVIDER_TYPE=azure"
        echo "COPILOT_PROVIDER_API_KEY=$key"
        echo "AZURE_OPENAI_ENDPOINT=$url"
        echo "AZURE_OPENAI_API_KEY=$key"
        echo "OPENAI_BASE_URL=$url/openai/v1"
        echo "OPENAI_API_KEY=$key"
        ;;
    anthropic)
        echo "ANTHROPIC_BASE_URL=$url"
        echo "ANTHROPIC_API_KEY=$key"
        echo "COPILOT_PROVIDER_BASE_URL=$url"
        echo "COPILOT_PROVIDER_TYPE=anthropic"
        echo "COPILOT_PROVIDER_API_KEY=$key"
        ;;
    gcp)
        echo "ANTHROPIC_VERTEX_BASE_URL=$url/v1"
        echo "CLAUDE_CODE_SKIP_VERTEX_AUTH=1"
        echo "CLOUD_ML_REGION=$region"
        ;;
    aws)
        echo "ANTHROPIC_BEDROCK_BASE_URL=$url"
        echo "CLAUDE_CODE_SKIP_BEDROCK_AUTH=1"
        echo "AWS_REGION=$region"
        ;;
    esac
} >>"$GITHUB_ENV"
{
    echo "base-url=$url"
    echo "pid=$pid"
    echo "log-file=$log"
} >>"$GITHUB_OUTPUT"
echo "tokenrelay: ready at $url (pid $pid), provider $provider, log $log"
