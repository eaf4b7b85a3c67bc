#!/usr/bin/env bash
# Copilot SDK (npm @github/copilot-sdk, pinned in lib.sh; it drives the bundled Copilot
# runtime) with two named BYOK providers, alpha and beta, whose bearerTokenProvider callbacks
# are answered by `tokenrelay token --output json` (e2e/node/tokenrelay-bearer.mjs).
# The runtime asks before every model request and caches nothing; tokenrelay's shared cache
# keeps one token per provider and scope, so the real source runs about once per token
# lifetime per provider, and each provider only ever gets tokens for its own scope.
set -euo pipefail
# shellcheck source=e2e/lib.sh
source "$(dirname "$0")/lib.sh"
e2e_init copilot-sdk
ensure_npm
command -v node >/dev/null || fail "node is not installed"

LIFETIME_S=6
ROUNDS=6
TURNS=3 # each round: 3 scripted tool turns, so 4 model requests
start_fakes "${LIFETIME_S}s"

cat >"$WORK/tokenrelay.toml" <<TOML
# Two providers, one token (and one cache entry) each. Only the sources matter to
# \`tokenrelay token\`; the upstreams are where the SDK sends the requests.
[[provider]]
name = "alpha"
upstream = "$UPSTREAM/alpha/v1"
scope = "api://alpha/.default"
[provider.source]
kind = "command"
command = "$FIX/idp-token.py"

[[provider]]
name = "beta"
upstream = "$UPSTREAM/beta/v1"
scope = "api://beta/.default"
[provider.source]
kind = "command"
command = "$FIX/idp-token.py"
TOML

mkdir -p "$WORK/app" "$WORK/copilot-home" "$WORK/ws" "$WORK/home"
cp "$E2E_DIR/node/copilot-sdk-app.mjs" "$E2E_DIR/node/tokenrelay-bearer.mjs" "$WORK/app/"
ln -s "$TOOLS/npm/node_modules" "$WORK/app/node_modules"

started=$SECONDS
code=0
timeout 180 env -u GH_TOKEN -u GITHUB_TOKEN -u COPILOT_GITHUB_TOKEN \
    HOME="$WORK/home" \
    E2E_SDK_ROUNDS="$ROUNDS" E2E_SDK_DIRECTIVES="e2e-tool-turns=$TURNS e2e-sleep=0" E2E_UPSTREAM="$UPSTREAM" TOKENRELAY="$TOKENRELAY" \
    TOKENRELAY_CONFIG="$WORK/tokenrelay.toml" E2E_CACHE_DIR="$WORK/cache" \
    E2E_COPILOT_HOME="$WORK/copilot-home" E2E_WORKDIR="$WORK/ws" \
    node "$WORK/app/copilot-sdk-app.mjs" >"$WORK/app.json" 2>"$WORK/app.err" || code=$?
elapsed=$((SECONDS - started))
[[ $code -eq 0 ]] || fail "the app exited $code: $(tail -c 800 "$WORK/app.json" "$WORK/app.err")"

out="$WORK/app.json"
for ((i = 0; i < ROUNDS; i++)); do
    p="$( ((i % 2 == 0)) && echo alpha || echo beta)"
    got="$(json "$out" "d['answers'][$i]['text']")"
    [[ "$got" == *"pong: "*"round $i via $p"* ]] || fail "round $i ($p): got '$got'"
done
alpha_scopes="$(json "$out" 'd["scopes"]["alpha"]')"
beta_scopes="$(json "$out" 'd["scopes"]["beta"]')"
[[ "$alpha_scopes" == '["api://alpha/.default"]' && "$beta_scopes" == '["api://beta/.default"]' ]] ||
    fail "tokens not partitioned: alpha got scopes $alpha_scopes, beta got $beta_scopes"
by_scope="$(stats 'd["accepted_by_scope"]')"
asked_a="$(json "$out" 'd["asked"]["alpha"]')"
asked_b="$(json "$out" 'd["asked"]["beta"]')"
up_a="$(stats 'd["accepted_by_scope"].get("api://alpha/.default", 0)')"
up_b="$(stats 'd["accepted_by_scope"].get("api://beta/.default", 0)')"
rejected="$(stats rejected)"
requests="$(stats requests)"
runs_a="$(source_runs_for api://alpha/.default)"
runs_b="$(source_runs_for api://beta/.default)"
[[ "$rejected" -eq 0 ]] || fail "upstream rejected $rejected requests"
[[ "$requests" -eq $((up_a + up_b)) ]] || fail "upstream requests $requests, accepted by scope $by_scope"
[[ "$asked_a" -eq "$up_a" && "$asked_b" -eq "$up_b" ]] ||
    fail "runtime asked alpha $asked_a / beta $asked_b times, upstream accepted $by_scope"
max_runs=$((elapsed / LIFETIME_S + 2))
[[ "$runs_a" -ge 1 && "$runs_a" -le "$max_runs" && "$runs_b" -ge 1 && "$runs_b" -le "$max_runs" ]] ||
    fail "source ran $runs_a (alpha) / $runs_b (beta) times over ${elapsed}s, expected at most $max_runs each"
[[ $((runs_a + runs_b)) -lt $((asked_a + asked_b)) ]] ||
    fail "source ran $((runs_a + runs_b)) times for $((asked_a + asked_b)) token requests: no caching"
summary "copilot-sdk $COPILOT_SDK_VERSION, 2 named providers: runtime asked alpha $asked_a / beta $asked_b times (one per request), real source ran $runs_a / $runs_b times over ${elapsed}s (tokens live ${LIFETIME_S}s), scopes partitioned, upstream rejected 0"
