#!/usr/bin/env bash
# Copilot SDK (npm @github/copilot-sdk, pinned in lib.sh; it drives the bundled Copilot
# runtime) with two named BYOK providers, alpha and beta, whose bearerTokenProvider callbacks
# are answered by the npm package `tokenrelay` built from this checkout (build_packages) and
# installed into a fresh prefix: its bearerTokenProvider keeps each provider's token in process
# until its refresh time. The runtime asks before every model request and caches nothing; the
# package runs the helper (the packaged binary) about once per token lifetime per provider, the
# real source runs as often, and each provider only ever gets tokens for its own scope.
set -euo pipefail
# shellcheck source=e2e/lib.sh
source "$(dirname "$0")/lib.sh"
e2e_init copilot-sdk
ensure_npm
command -v node >/dev/null || fail "node is not installed"
build_packages

LIFETIME_S=6
ROUNDS=10
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
printf '{ "private": true, "type": "module" }\n' >"$WORK/app/package.json"
timeout 300 npm install --prefix "$WORK/app" --no-audit --no-fund --loglevel=error \
    "$NPM_MAIN" "$NPM_PLATFORM" >"$WORK/npm.log" 2>&1 || fail "npm install of the tarballs failed: $(tail -5 "$WORK/npm.log")"
cp "$E2E_DIR/node/copilot-sdk-app.mjs" "$WORK/app/"
# The SDK from the pinned install (it resolves its own dependencies from there).
ln -s "$TOOLS/npm/node_modules/@github" "$WORK/app/node_modules/@github"

started=$SECONDS
code=0
timeout 180 env -u GH_TOKEN -u GITHUB_TOKEN -u COPILOT_GITHUB_TOKEN \
    HOME="$WORK/home" \
    E2E_SDK_ROUNDS="$ROUNDS" E2E_SDK_DIRECTIVES="e2e-tool-turns=$TURNS e2e-sleep=0" E2E_UPSTREAM="$UPSTREAM" \
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
helper_a="$(json "$out" 'd["helperRuns"]["alpha"]')"
helper_b="$(json "$out" 'd["helperRuns"]["beta"]')"
binary="$(json "$out" 'd["binary"]')"
[[ "$binary" == "$WORK/app/node_modules/@tokenrelay/linux-x64/bin/tokenrelay" ]] ||
    fail "the package ran $binary, not its platform package's binary"
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
[[ "$helper_a" -ge "$runs_a" && "$helper_a" -le "$max_runs" && "$helper_b" -ge "$runs_b" && "$helper_b" -le "$max_runs" ]] ||
    fail "the package ran the helper $helper_a (alpha) / $helper_b (beta) times over ${elapsed}s, expected at most $max_runs each"
[[ $((helper_a + helper_b)) -lt $((asked_a + asked_b)) ]] ||
    fail "the helper ran $((helper_a + helper_b)) times for $((asked_a + asked_b)) token requests: no in-process caching"
summary "copilot-sdk $COPILOT_SDK_VERSION + npm tokenrelay, 2 named providers: runtime asked alpha $asked_a / beta $asked_b times (one per request), the package ran the helper $helper_a / $helper_b times, real source $runs_a / $runs_b times over ${elapsed}s (tokens live ${LIFETIME_S}s), scopes partitioned, upstream rejected 0"
