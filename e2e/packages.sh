#!/usr/bin/env bash
# The packages, built from this checkout and installed the way users install them, with no
# Rust toolchain on PATH: the wheel into a fresh venv (`pip install tokenrelay`), the npm
# tarballs into a fresh prefix (`npm install tokenrelay`, `npx tokenrelay`); `tokenrelay demo
# --once` from each. Then the packaged Python provider under the real OpenAI Python SDK
# (AzureOpenAI and AsyncAzureOpenAI with azure_ad_token_provider, e2e/fixtures/
# azure_openai_provider.py) over several 3-second token lifetimes: one helper run per lifetime,
# not one per request; one run for 16 cold threads and for 16 cold tasks (the event loop kept
# running); invalidate() re-runs it. Ends with the provider's warm-call timing against a helper
# process per call (docs/benchmarks.md).
set -euo pipefail
# shellcheck source=e2e/lib.sh
source "$(dirname "$0")/lib.sh"
e2e_init packages
command -v node >/dev/null || fail "node is not installed"

# The providers' unit tests (stand-in helper; packaging/python/tests, packaging/npm/test).
timeout 300 python3 -m unittest discover -s "$ROOT/packaging/python/tests" >"$WORK/unit-py.log" 2>&1 ||
    fail "Python provider unit tests: $(tail -20 "$WORK/unit-py.log")"
timeout 300 node --test "$ROOT/packaging/npm/test/" >"$WORK/unit-js.log" 2>&1 ||
    fail "npm provider unit tests: $(grep -A20 '^not ok' "$WORK/unit-js.log" | head -30)"
unit_py="$(sed -n 's/^Ran \([0-9]*\) tests.*/\1/p' "$WORK/unit-py.log")"
unit_js="$(sed -n 's/^# pass \([0-9]*\)/\1/p' "$WORK/unit-js.log")"
note "provider unit tests: $unit_py Python, $unit_js Node passed"
build_packages
note "built $(basename "$WHEEL") $(basename "$NPM_MAIN") $(basename "$NPM_PLATFORM")"

# No cargo, rustc or rustup on the PATH the installs and runs see.
NORUST_PATH="$WORK/norust-bin:/usr/local/bin:/usr/bin:/bin"
mkdir -p "$WORK/norust-bin"
ln -s "$(python3 -c 'import sys; print(sys.executable)')" "$WORK/norust-bin/python3"
norust() {
    env -u CARGO_HOME -u RUSTUP_HOME -u RUSTFLAGS PATH="$NORUST_PATH" HOME="$WORK/home" "$@"
}
mkdir -p "$WORK/home"
if norust bash -c 'command -v cargo || command -v rustc || command -v rustup' >/dev/null; then
    fail "a Rust tool is still on PATH=$NORUST_PATH"
fi

# pip: a fresh venv with the wheel (no index needed: no runtime dependencies) and openai.
venv="$WORK/venv"
norust python3 -m venv "$venv"
norust timeout 300 "$venv/bin/pip" install --quiet --no-index "$WHEEL" >"$WORK/pip.log" 2>&1 ||
    fail "pip install of the wheel failed: $(tail -5 "$WORK/pip.log")"
[[ -x "$venv/bin/tokenrelay" ]] || fail "the wheel put no tokenrelay into $venv/bin"
norust timeout 120 "$venv/bin/tokenrelay" demo --once >"$WORK/demo-pip.log" 2>&1 ||
    fail "tokenrelay demo --once from the wheel: $(tail -5 "$WORK/demo-pip.log")"
grep -q "^demo ok" "$WORK/demo-pip.log" || fail "demo from the wheel did not say ok"
note "pip: $venv/bin/tokenrelay demo --once: ok"

# npm: a fresh prefix with both tarballs; the launcher on .bin and through npx.
prefix="$WORK/npm"
mkdir -p "$prefix"
printf '{ "private": true }\n' >"$prefix/package.json"
norust timeout 300 npm install --prefix "$prefix" --no-audit --no-fund --loglevel=error \
    "$NPM_MAIN" "$NPM_PLATFORM" >"$WORK/npm.log" 2>&1 ||
    fail "npm install of the tarballs failed: $(tail -5 "$WORK/npm.log")"
norust timeout 120 "$prefix/node_modules/.bin/tokenrelay" demo --once >"$WORK/demo-npm.log" 2>&1 ||
    fail "tokenrelay demo --once from npm: $(tail -5 "$WORK/demo-npm.log")"
grep -q "^demo ok" "$WORK/demo-npm.log" || fail "demo from npm did not say ok"
(cd "$prefix" && norust timeout 120 npx --no-install tokenrelay demo --once) >"$WORK/demo-npx.log" 2>&1 ||
    fail "npx tokenrelay demo --once: $(tail -5 "$WORK/demo-npx.log")"
grep -q "^demo ok" "$WORK/demo-npx.log" || fail "demo through npx did not say ok"
code=0
norust "$prefix/node_modules/.bin/tokenrelay" token --token-env E2E_NO_SUCH_VAR >/dev/null 2>"$WORK/exit.err" || code=$?
[[ $code -ne 0 ]] || fail "the launcher did not pass the binary's failure on"
expected=0
"$STATIC_BIN" token --token-env E2E_NO_SUCH_VAR >/dev/null 2>&1 || expected=$?
[[ $code -eq $expected ]] || fail "the launcher exited $code, the binary $expected"
note "npm: .bin/tokenrelay and npx tokenrelay demo --once: ok; exit code $code passed through"

# The Python provider under the OpenAI SDK.
note "installing openai==$OPENAI_PY_VERSION into the fresh venv"
norust timeout 300 "$venv/bin/pip" install --quiet "openai==$OPENAI_PY_VERSION" >>"$WORK/pip.log" 2>&1 ||
    fail "pip install openai failed: $(tail -5 "$WORK/pip.log")"
LIFETIME_S=3
REQUESTS=40
start_fakes "${LIFETIME_S}s"
norust timeout 180 env E2E_FAKES="$E2E_FAKES" E2E_SOURCE_LOG="$E2E_SOURCE_LOG" E2E_FIX="$FIX" \
    "$venv/bin/python" "$FIX/azure_openai_provider.py" "$UPSTREAM" "$REQUESTS" 0.25 \
    >"$WORK/py.json" 2>"$WORK/py.err" || fail "the Python client failed: $(cat "$WORK/py.json") $(tail -c 1500 "$WORK/py.err")"
r() { json "$WORK/py.json" "$1"; }
[[ "$(r 'd["binary"]')" == "$venv/bin/tokenrelay" ]] || fail "the provider ran $(r 'd["binary"]'), not the venv's binary"
[[ "$(r 'd["statuses"]')" == "{\"200\": $REQUESTS}" ]] || fail "the SDK saw $(r 'd["statuses"]')"
[[ "$(r 'd["failures"]')" == "[]" ]] || fail "answers: $(r 'd["failures"]')"
calls="$(r 'd["provider_calls"]')"
runs="$(r 'd["helper_runs"]')"
elapsed="$(r 'd["elapsed_s"]')"
lifetime="$(r 'd["lifetime_s"]')"
[[ "$calls" -ge "$REQUESTS" ]] || fail "the SDK asked the provider $calls times for $REQUESTS requests"
# A token lives at most LIFETIME_S and at least LIFETIME_S - 1 (the JWT's exp is in whole
# seconds); the helper's cache makes it due 2/3 into that. So at least elapsed / LIFETIME_S runs
# and at most one per 2/3 of (LIFETIME_S - 1), plus the first.
bounds="$(python3 -c "import math; e = $elapsed; l = $LIFETIME_S; print(math.floor(e / l), math.ceil(e / ((l - 1) * 2 / 3)) + 1)")"
min_runs="${bounds% *}" max_runs="${bounds#* }"
[[ "$min_runs" -ge 3 ]] || fail "the run covered only $min_runs token lifetimes"
[[ "$runs" -ge "$min_runs" && "$runs" -le "$max_runs" ]] ||
    fail "the helper ran $runs times for $calls calls over ${elapsed}s (expected $min_runs..$max_runs; tokens live ${lifetime}s)"
[[ "$(r 'd["threads"]')" == '{"callers": 16, "distinct_tokens": 1, "helper_runs": 1}' ]] ||
    fail "16 cold threads: $(r 'd["threads"]')"
[[ "$(r 'd["asyncio"]["callers"]'),$(r 'd["asyncio"]["distinct_tokens"]'),$(r 'd["asyncio"]["helper_runs"]'),$(r 'd["asyncio"]["async_client_ok"]')" == "16,1,1,true" ]] ||
    fail "16 cold tasks: $(r 'd["asyncio"]')"
ticks="$(r 'd["asyncio"]["ticks_during_refresh"]')"
refresh_ms="$(r 'd["asyncio"]["refresh_ms"]')"
[[ "$ticks" -ge 3 ]] || fail "the event loop ticked $ticks times during a ${refresh_ms} ms refresh: blocked"
[[ "$(r 'd["invalidate"]')" == '{"helper_runs": 1, "new_token": true}' ]] || fail "invalidate: $(r 'd["invalidate"]')"
[[ "$(r 'd["repr_hides_token"]')" == "true" ]] || fail "Token's repr shows the token"
[[ "$(stats rejected)" -eq 0 ]] || fail "the upstream rejected $(stats rejected) requests"
note "openai $OPENAI_PY_VERSION AzureOpenAI: $REQUESTS requests, $calls provider calls, $runs helper runs over ${elapsed}s (tokens live ${LIFETIME_S}s); 16 threads -> 1 run; 16 tasks -> 1 run (loop ticked $ticks times in $refresh_ms ms)"

bench="$(norust env E2E_FAKES="$E2E_FAKES" E2E_FIX="$FIX" "$venv/bin/python" "$FIX/provider_bench.py" "$WORK/bench-cache")" ||
    fail "provider_bench.py failed"
warm_us="$(echo "$bench" | json - 'd["warm_call_us"]')"
proc_ms="$(echo "$bench" | json - 'd["helper_process_ms"]')"
summary "provider unit tests $unit_py + $unit_js; wheel + npm tarballs installed with no Rust on PATH, demo --once from pip, npm and npx; AzureOpenAI: $REQUESTS requests cost $runs helper runs over ${elapsed}s (${LIFETIME_S}s tokens), 0 failures; threads/asyncio: 1 run per 16 cold callers; warm provider call ${warm_us} us vs helper process ${proc_ms} ms"
