# Shared by bench/run and bench/instructions (sourced, not run). Needs APT_LOG set to the file
# that apt-get's output goes to.

# A loopback port nobody listens on, below the kernel's ephemeral range: a port in that range can
# be held by an outgoing connection (wrk's, a proxy's to the upstream), which the probe below does
# not see and which makes the later bind fail (seen once: "Address already in use"). Bounded tries.
free_port() {
    local i p lo=32768 rest span
    read -r lo rest </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || true
    span=$((lo - 10000))
    ((span >= 1000)) || span=40000 # an unusual range: any port from 10000 on, as before
    for ((i = 0; i < 100; i++)); do
        p=$((10000 + RANDOM % span))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return 0
        fi
    done
    echo "bench: no free port found" >&2
    return 1
}

wait_ready() { # url seconds [curl options]: until it answers 2xx
    local url=$1 limit=$2 i
    shift 2
    for ((i = 0; i < limit * 10; i++)); do
        curl -fsS -o /dev/null --max-time 1 "$@" "$url" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "bench: $url not ready after ${limit}s" >&2
    return 1
}

# Starts bench-upstream ($UPSTREAM_BIN, token $TOKEN, ${EVENTS:-20} SSE events) in the background,
# logging to DIR/NAME.log; adds its pid to PIDS and sets the variable VAR to its port (read from
# the port file it writes once it listens).
start_upstream() { # VAR DIR NAME extra-args...
    local var=$1 dir=$2 name=$3 i
    shift 3
    rm -f "$dir/$name.port"
    "$UPSTREAM_BIN" --listen 127.0.0.1:0 --port-file "$dir/$name.port" --token "$TOKEN" \
        --events "${EVENTS:-20}" "$@" >"$dir/$name.log" 2>&1 &
    PIDS+=($!)
    for ((i = 0; i < 50; i++)); do [[ -s $dir/$name.port ]] && break; sleep 0.1; done
    printf -v "$var" '%s' "$(cat "$dir/$name.port")"
}

SUDO=
if [[ $(id -u) -ne 0 ]] && command -v sudo >/dev/null; then SUDO=sudo; fi
APT_UPDATED=0
apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    if ! $SUDO apt-get install -y -q "$@" >>"$APT_LOG" 2>&1; then
        if ((APT_UPDATED == 0)); then
            APT_UPDATED=1
            $SUDO apt-get update -q >>"$APT_LOG" 2>&1
        fi
        $SUDO apt-get install -y -q "$@" >>"$APT_LOG" 2>&1
    fi
}
need() { # command package
    command -v "$1" >/dev/null || [[ -x /usr/sbin/$1 ]] || { echo "installing $2" >&2; apt_install "$2"; }
}

# nginx as the floor for an injecting proxy: static Authorization header, upstream keepalive,
# no response buffering (SSE must pass through as it arrives). Every bench measures this same
# configuration; only the process model (workers, master) is the caller's. With a CA file, the
# upstream is HTTPS (bench-upstream --tls-cert, a certificate for localhost): verified against
# that CA, SNI localhost, TLS sessions reused; nginx speaks HTTP/1.1 to it (it has no h2 upstream).
nginx_conf() { # dir listen_port upstream_port token main_directives [ca_file]
    local dir=$1 port=$2 up=$3 token=$4 main=$5 ca=${6:-} scheme=http tls=""
    if [[ -n $ca ]]; then
        scheme=https
        tls="
            proxy_ssl_trusted_certificate $ca;
            proxy_ssl_verify on;
            proxy_ssl_name localhost;
            proxy_ssl_server_name on;
            proxy_ssl_session_reuse on;"
    fi
    mkdir -p "$dir"
    cat >"$dir/nginx.conf" <<EOF
$main
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $dir/body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    upstream bench_upstream {
        server 127.0.0.1:$up;
        keepalive 128;
    }
    server {
        listen 127.0.0.1:$port;
        location / {
            proxy_pass $scheme://bench_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Authorization "Bearer $token";
            proxy_buffering off;$tls
        }
    }
}
EOF
}
