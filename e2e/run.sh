#!/usr/bin/env bash
# Runs every end-to-end test with real clients (Copilot CLI proxy and helper faces, OpenAI
# Python SDK and its Realtime client, the MCP SDK, Codex and Copilot CLI over WebSockets, Copilot
# SDK, Claude Code (also in Vertex mode), the GitHub Actions composite action (provider azure
# with Copilot CLI, aws with Claude Code in Bedrock mode against moto's STS, gcp with Claude Code
# in Vertex mode), google-auth and the Anthropic federation flow against loopback cloud fakes)
# and HTTP/2 and HTTP/1.1 over TLS to a real nginx, after building the release binary; then the
# packages (wheel, npm tarballs, their providers under the OpenAI Python SDK and the Copilot
# SDK), the container image (buildah + podman), the workflow linters (actionlint, zizmor) and the
# crates as cargo package builds them.
# Clients are installed at pinned versions into e2e/.tools/ (kept across runs).
# Ends with the line `N passed, M failed` (`, K skipped` when some skipped); exits non-zero
# when any failed.
#
# Usage: bash e2e/run.sh [TEST...]   (names without .sh; default: all)
set -euo pipefail
cd "$(dirname "$0")/.."

TESTS=(copilot-cli-proxy copilot-cli-helper openai-python openai-realtime mcp ws-agents packages copilot-sdk claude-code github-actions action-aws action-gcp action-install nginx-h2 google anthropic-federated claude-code-vertex image workflows crates)
if [[ $# -gt 0 ]]; then
    TESTS=("$@")
fi

if [[ -z "${TOKENRELAY_BIN:-}" ]]; then
    echo "== e2e: cargo build --release"
    cargo build --release --quiet -p tokenrelay-cli
fi

# The packages' static binary, wheel and npm tarballs, once and outside the per-test time limit
# (a cold static release build takes minutes); the tests that use them rebuild nothing.
for t in "${TESTS[@]}"; do
    case $t in
        packages | copilot-sdk | image)
            echo "== e2e: build the packages (crt-static binary, wheel, npm tarballs)"
            (
                # shellcheck source=e2e/lib.sh
                source e2e/lib.sh
                E2E_NAME=build
                build_packages
            )
            break
            ;;
    esac
done

passed=0
failed=0
skipped=0
failures=()
for t in "${TESTS[@]}"; do
    echo "== e2e: $t"
    started=$SECONDS
    code=0
    timeout 600 bash "e2e/$t.sh" || code=$?
    case $code in
        0) passed=$((passed + 1)) ;;
        77) skipped=$((skipped + 1)) ;;
        *)
            failed=$((failed + 1))
            failures+=("$t (exit $code)")
            ;;
    esac
    echo "   ($t: $((SECONDS - started))s)"
done
if [[ $failed -gt 0 ]]; then
    echo "e2e failures: ${failures[*]}"
fi
if [[ $skipped -gt 0 ]]; then
    echo "$passed passed, $failed failed, $skipped skipped"
else
    echo "$passed passed, $failed failed"
fi
[[ $failed -eq 0 ]]
