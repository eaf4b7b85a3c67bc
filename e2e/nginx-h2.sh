#!/usr/bin/env bash
# HTTP/2 and HTTP/1.1 over TLS to a real nginx (issue #13): nginx (installed with apt when
# missing, via bench/common.sh) terminates TLS with the test certificate for localhost in
# crates/tokenrelay/tests/fixtures/tls/ on two server blocks, one `listen ... ssl http2;` and one
# without http2, both proxying to a loopback backend that accepts exactly one token. tokenrelay
# serve has a provider for each (`upstream = "https://localhost:PORT"`, `ca_bundle` = the test
# CA) and must relay JSON and SSE through both, with nginx's access log showing HTTP/2.0 on the
# first and HTTP/1.1 on the second.
#
# Usage: bash e2e/nginx-h2.sh   (exits 77, skipped, when nginx cannot be installed)
set -euo pipefail
# shellcheck source=e2e/lib.sh
source "$(dirname "$0")/lib.sh"
e2e_init nginx-h2
APT_LOG="$WORK/apt.log"
# shellcheck source=bench/common.sh
source "$ROOT/bench/common.sh"
if ! command -v nginx >/dev/null && [[ ! -x /usr/sbin/nginx ]]; then
    timeout 300 bash -c "source '$ROOT/bench/common.sh'; APT_LOG='$APT_LOG'; need nginx nginx" ||
        skip "nginx is not installed and apt-get could not install it: $(tail -c 300 "$APT_LOG" 2>/dev/null)"
fi
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
TLS="$ROOT/crates/tokenrelay/tests/fixtures/tls"
TOKEN="TKFSECRET-nginx-$RANDOM$RANDOM"
printf '%s' "$TOKEN" >"$WORK/token" # the command reads it, so no log of the command line has it

python3 "$FIX/backend.py" "$WORK/backend.port" "$TOKEN" &
PIDS+=($!)
for ((i = 0; i < 50; i++)); do [[ -s "$WORK/backend.port" ]] && break; sleep 0.1; done
[[ -s "$WORK/backend.port" ]] || fail "the backend did not start"
BACKEND="$(cat "$WORK/backend.port")"

H2="$(free_port)"
H1="$(free_port)"
while [[ "$H1" == "$H2" ]]; do H1="$(free_port)"; done
N="$WORK/nginx"
mkdir -p "$N"
cat >"$N/nginx.conf" <<CONF
daemon off;
master_process off;
worker_processes 1;
pid $N/nginx.pid;
error_log $N/error.log info;
events { worker_connections 256; }
http {
    log_format proto '\$server_port \$server_protocol \$status \$request_uri';
    access_log $N/access.log proto;
    client_body_temp_path $N/body;
    proxy_temp_path $N/proxy;
    fastcgi_temp_path $N/fastcgi;
    uwsgi_temp_path $N/uwsgi;
    scgi_temp_path $N/scgi;
    ssl_certificate $TLS/server.pem;
    ssl_certificate_key $TLS/server-key.pem;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_buffering off;
    server {
        listen 127.0.0.1:$H2 ssl http2;
        location / { proxy_pass http://127.0.0.1:$BACKEND; }
    }
    server {
        listen 127.0.0.1:$H1 ssl;
        location / { proxy_pass http://127.0.0.1:$BACKEND; }
    }
}
CONF
timeout 10 "$NGINX" -p "$N" -c "$N/nginx.conf" -t >"$N/test.log" 2>&1 || fail "nginx -t: $(tail -c 400 "$N/test.log")"
"$NGINX" -p "$N" -c "$N/nginx.conf" >"$N/stdout.log" 2>&1 &
PIDS+=($!)

PORT="$(free_port)"
cat >"$WORK/serve.toml" <<CONF
listen = "127.0.0.1:$PORT"
ca_bundle = "$TLS/ca.pem"
[[provider]]
name = "h2"
upstream = "https://localhost:$H2"
path_prefix = "/h2"
[provider.source]
kind = "command"
command = "cat $WORK/token"
[[provider]]
name = "h1"
upstream = "https://localhost:$H1"
path_prefix = "/h1"
[provider.source]
kind = "command"
command = "cat $WORK/token"
CONF
"$TOKENRELAY" serve --config "$WORK/serve.toml" --log-level debug >"$WORK/serve.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$PORT/healthz"
for ((i = 0; i < 50; i++)); do (exec 3<>"/dev/tcp/127.0.0.1/$H2") 2>/dev/null && break; sleep 0.1; done

# JSON and SSE through each provider; prints one line per check.
results="$(timeout 60 python3 - "$PORT" <<'PY'
import http.client, json, sys
port = int(sys.argv[1])
for p in ("h2", "h1"):
    for kind in ("json", "sse"):
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            if kind == "json":
                c.request("POST", f"/{p}/v1/chat", body=b'{"x": 1}', headers={"Content-Type": "application/json"})
            else:
                c.request("GET", f"/{p}/v1/sse?n=5&d=0.05")
            r = c.getresponse()
            body = r.read()
            if kind == "json":
                ok = r.status == 200 and json.loads(body).get("tag") == "nginx"
            else:
                ok = r.status == 200 and body.count(b"data: {") == 5 and b"[DONE]" in body
            print(f"{'ok' if ok else 'FAIL'} {p} {kind}: {r.status} {body[:120]!r}")
        except Exception as e:  # noqa: BLE001
            print(f"FAIL {p} {kind}: {type(e).__name__}: {e}")
PY
)" || true
echo "$results" | sed 's/^/  nginx-h2: /'
sleep 0.2
grep -q "TKFSECRET" "$WORK/serve.log" && fail "the token appears in tokenrelay's debug log"
grep -q "^$H2 HTTP/2.0 200" "$N/access.log" || note "nginx's h2 server logged no HTTP/2.0 200: $(grep "^$H2 " "$N/access.log" | head -3 | tr '\n' ';')"
grep -q "^$H1 HTTP/1.1 200" "$N/access.log" || note "nginx's h1 server logged no HTTP/1.1 200"
if grep -q "duplicate host header" "$N/error.log"; then
    note "nginx error log: $(grep -m1 -o 'client sent duplicate host header.*' "$N/error.log" | head -c 200)"
fi
bad="$(echo "$results" | grep -c '^FAIL' || true)"
[[ "$bad" -eq 0 ]] || fail "$bad of 4 checks failed (see above)"
grep -q "^$H2 HTTP/2.0 200" "$N/access.log" || fail "nginx did not serve the h2 provider over HTTP/2"
grep -q "^$H1 HTTP/1.1 200" "$N/access.log" || fail "nginx did not serve the h1 provider over HTTP/1.1"
summary "JSON and SSE through nginx $("$NGINX" -v 2>&1 | sed 's/.*nginx\///') over HTTP/2 and HTTP/1.1 with TLS (test CA)"
