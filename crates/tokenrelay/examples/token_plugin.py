#!/usr/bin/env python3
"""A tokenrelay plugin: JSON-RPC 2.0 over stdio, one JSON object per line.

tokenrelay starts this once and calls `providerToken.acquire` with
{"providerName": ..., "scope": ...}; the answer is {"token", "expiresOnTimestamp"} (ms) or a
bare string (no known expiry: tokenrelay asks again for every request). Replace `mint` with
real identity code (e.g. a call into an SDK). Run it with:

    [provider.source]
    kind = "plugin"
    command = "python3 examples/token_plugin.py"    # a shell line, as for kind = "command"
    # args = ["python3", "examples/token_plugin.py"] # or argv form, no shell

Test modes (first argument): `bare` answers strings, `hang` never answers scope "hang",
`die` exits after each answer; scope "fail" always gets a JSON-RPC error.
"""
import json
import os
import sys
import time

MODE = sys.argv[1] if len(sys.argv) > 1 else ""
count = 0


def mint(provider, scope):
    global count
    count += 1
    return f"plugin-{os.getpid()}-{provider}-{count}"


for line in sys.stdin:
    msg = json.loads(line)
    params = msg.get("params") or {}
    provider, scope = params.get("providerName"), params.get("scope")
    print(f"plugin: acquire for {provider}", file=sys.stderr, flush=True)
    if msg.get("method") != "providerToken.acquire":
        reply = {"jsonrpc": "2.0", "id": msg.get("id"),
                 "error": {"code": -32601, "message": "method not found"}}
    elif scope == "hang" and MODE == "hang":
        continue
    elif scope == "fail":
        reply = {"jsonrpc": "2.0", "id": msg["id"],
                 "error": {"code": -32000, "message": "DefaultAzureCredential failed to retrieve a token"}}
    elif MODE == "bare":
        reply = {"jsonrpc": "2.0", "id": msg["id"], "result": mint(provider, scope)}
    else:
        expires = int((time.time() + 3600) * 1000)
        reply = {"jsonrpc": "2.0", "id": msg["id"],
                 "result": {"token": mint(provider, scope), "expiresOnTimestamp": expires}}
    sys.stdout.write(json.dumps(reply) + "\n")
    sys.stdout.flush()
    if MODE == "die":
        sys.exit(0)
