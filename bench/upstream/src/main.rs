//! A minimal OpenAI-compatible upstream for `bench/run`: the fixed cost every proxy in the
//! comparison forwards to, kept as small as possible so that differences are the proxies'.
//!
//! - `POST /v1/chat/completions` (any path, really) answers a small `chat.completion` JSON, or,
//!   when the request body has `"stream": true`, an SSE stream of `--events` chunks followed by
//!   `data: [DONE]`, each event its own body frame (nothing is delayed).
//! - Requests must carry `Authorization: Bearer <--token>`; others get an OpenAI-shaped 401, so
//!   a proxy that fails to inject shows up as non-2xx responses in the load generator.
//! - `GET /healthz` answers `ok` without auth; `GET /stats` answers the request counters, with
//!   the connections and requests per protocol (so a benchmark can tell whether a proxy spoke
//!   HTTP/2 or HTTP/1.1 to it).
//! - Plain HTTP/1.1 by default; with `--tls-cert FILE --tls-key FILE`, TLS (rustls) with ALPN
//!   `h2` and `http/1.1`, each connection served with the protocol it negotiated (HTTP/1.1 when
//!   the client offered no ALPN); `--no-h2` offers `http/1.1` only.
//!
//! Run: `bench-upstream --listen 127.0.0.1:0 --port-file FILE [--token T] [--events N] [--threads N]
//! [--tls-cert FILE --tls-key FILE [--no-h2]]`.

mod tls;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;

const COMPLETION: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"bench","choices":[{"index":0,"message":{"role":"assistant","content":"Hello from the bench upstream."},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":7,"total_tokens":16}}"#;

const UNAUTHORIZED: &str = r#"{"error":{"message":"bench upstream: missing or wrong bearer token","type":"invalid_request_error","code":"invalid_api_key"}}"#;

/// A body that yields pre-built frames one by one (each SSE event is its own frame).
struct Frames(VecDeque<Bytes>);

impl Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        // Unknown length on purpose: SSE goes out chunked, as real providers send it.
        SizeHint::default()
    }
}

type OutBody = http_body_util::Either<Full<Bytes>, Frames>;

struct State {
    expected: HeaderValue,
    events: Vec<Bytes>,
    requests: AtomicU64,
    streams: AtomicU64,
    unauthorized: AtomicU64,
    /// Requests that came over HTTP/2.
    h2_requests: AtomicU64,
    h1_connections: AtomicU64,
    h2_connections: AtomicU64,
    /// TLS handshakes that failed or timed out.
    tls_errors: AtomicU64,
}

fn sse_events(n: usize) -> Vec<Bytes> {
    let mut out = Vec::with_capacity(n + 2);
    for i in 0..n {
        out.push(Bytes::from(format!(
            "data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"bench\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"tok{i} \"}},\"finish_reason\":null}}]}}\n\n"
        )));
    }
    out.push(Bytes::from_static(
        b"data: {\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"bench\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
    ));
    out.push(Bytes::from_static(b"data: [DONE]\n\n"));
    out
}

fn response(status: StatusCode, content_type: &'static str, body: OutBody) -> Response<OutBody> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

fn wants_stream(body: &[u8]) -> bool {
    let needle = b"\"stream\"";
    body.windows(needle.len())
        .position(|w| w == needle)
        .is_some_and(|at| {
            body[at + needle.len()..]
                .iter()
                .find(|b| !matches!(b, b' ' | b':' | b'\t'))
                .is_some_and(|b| *b == b't')
        })
}

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<OutBody>, Infallible> {
    let path = req.uri().path();
    if path == "/healthz" {
        return Ok(response(
            StatusCode::OK,
            "text/plain",
            http_body_util::Either::Left(Full::new(Bytes::from_static(b"ok"))),
        ));
    }
    if path == "/stats" {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let s = format!(
            "{{\"requests\":{},\"streams\":{},\"unauthorized\":{},\"h2_requests\":{},\"h1_connections\":{},\"h2_connections\":{},\"tls_errors\":{}}}",
            n(&state.requests),
            n(&state.streams),
            n(&state.unauthorized),
            n(&state.h2_requests),
            n(&state.h1_connections),
            n(&state.h2_connections),
            n(&state.tls_errors),
        );
        return Ok(response(
            StatusCode::OK,
            "application/json",
            http_body_util::Either::Left(Full::new(Bytes::from(s))),
        ));
    }
    state.requests.fetch_add(1, Ordering::Relaxed);
    if req.version() == Version::HTTP_2 {
        state.h2_requests.fetch_add(1, Ordering::Relaxed);
    }
    let authorized = req.headers().get(AUTHORIZATION) == Some(&state.expected);
    let body = match req.into_body().collect().await {
        Ok(c) => c.to_bytes(),
        Err(_) => Bytes::new(),
    };
    if !authorized {
        state.unauthorized.fetch_add(1, Ordering::Relaxed);
        return Ok(response(
            StatusCode::UNAUTHORIZED,
            "application/json",
            http_body_util::Either::Left(Full::new(Bytes::from_static(UNAUTHORIZED.as_bytes()))),
        ));
    }
    if wants_stream(&body) {
        state.streams.fetch_add(1, Ordering::Relaxed);
        let mut resp = response(
            StatusCode::OK,
            "text/event-stream",
            http_body_util::Either::Right(Frames(state.events.iter().cloned().collect())),
        );
        resp.headers_mut()
            .insert("cache-control", HeaderValue::from_static("no-cache"));
        return Ok(resp);
    }
    Ok(response(
        StatusCode::OK,
        "application/json",
        http_body_util::Either::Left(Full::new(Bytes::from_static(COMPLETION.as_bytes()))),
    ))
}

struct Args {
    listen: SocketAddr,
    port_file: Option<String>,
    token: String,
    events: usize,
    threads: usize,
    tls_cert: Option<String>,
    tls_key: Option<String>,
    h2: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        port_file: None,
        token: "bench-token".into(),
        events: 20,
        threads: 1,
        tls_cert: None,
        tls_key: None,
        h2: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => a.listen = value()?.parse().map_err(|e| format!("--listen: {e}"))?,
            "--port-file" => a.port_file = Some(value()?),
            "--token" => a.token = value()?,
            "--events" => a.events = value()?.parse().map_err(|e| format!("--events: {e}"))?,
            "--threads" => a.threads = value()?.parse().map_err(|e| format!("--threads: {e}"))?,
            "--tls-cert" => a.tls_cert = Some(value()?),
            "--tls-key" => a.tls_key = Some(value()?),
            "--no-h2" => a.h2 = false,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if a.tls_cert.is_some() != a.tls_key.is_some() {
        return Err("--tls-cert and --tls-key go together".into());
    }
    if !a.h2 && a.tls_cert.is_none() {
        return Err("--no-h2 needs --tls-cert and --tls-key (plain HTTP is HTTP/1.1 only)".into());
    }
    Ok(a)
}

async fn serve(args: Args) -> Result<(), String> {
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("bind {}: {e}", args.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    if let Some(f) = &args.port_file {
        std::fs::write(f, format!("{}\n", addr.port())).map_err(|e| format!("{f}: {e}"))?;
    }
    let acceptor = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(tls::acceptor(cert, key, args.h2)?),
        _ => None,
    };
    println!(
        "bench-upstream listening on {addr} ({})",
        match (&acceptor, args.h2) {
            (None, _) => "plain HTTP/1.1",
            (Some(_), true) => "TLS, ALPN h2 and http/1.1",
            (Some(_), false) => "TLS, ALPN http/1.1 only",
        }
    );
    let expected = HeaderValue::from_str(&format!("Bearer {}", args.token))
        .map_err(|e| format!("--token: {e}"))?;
    let state = Arc::new(State {
        expected,
        events: sse_events(args.events),
        requests: AtomicU64::new(0),
        streams: AtomicU64::new(0),
        unauthorized: AtomicU64::new(0),
        h2_requests: AtomicU64::new(0),
        h1_connections: AtomicU64::new(0),
        h2_connections: AtomicU64::new(0),
        tls_errors: AtomicU64::new(0),
    });
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                eprintln!("accept: {e}");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let Some(acceptor) = acceptor else {
                return serve_connection(state, stream, false).await;
            };
            match tls::accept(&acceptor, stream).await {
                Ok((stream, h2)) => serve_connection(state, stream, h2).await,
                Err(e) => {
                    state.tls_errors.fetch_add(1, Ordering::Relaxed);
                    eprintln!("{e}");
                }
            }
        });
    }
}

/// Serves one connection with HTTP/2 (`h2`) or HTTP/1.1 until the client closes it.
async fn serve_connection<I>(state: Arc<State>, io: I, h2: bool)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let counter = if h2 {
        &state.h2_connections
    } else {
        &state.h1_connections
    };
    counter.fetch_add(1, Ordering::Relaxed);
    let svc_state = state.clone();
    let svc = service_fn(move |req| handle(svc_state.clone(), req));
    let io = TokioIo::new(io);
    let _ = if h2 {
        http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .serve_connection(io, svc)
            .await
    } else {
        http1::Builder::new().serve_connection(io, svc).await
    };
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench-upstream: {e}");
            std::process::exit(2);
        }
    };
    let rt = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()
    };
    let result = match rt {
        Ok(rt) => rt.block_on(serve(args)),
        Err(e) => Err(format!("runtime: {e}")),
    };
    if let Err(e) = result {
        eprintln!("bench-upstream: {e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::wants_stream;

    #[test]
    fn detects_stream_flag() {
        assert!(wants_stream(br#"{"model":"m","stream":true}"#));
        assert!(wants_stream(br#"{"stream" : true, "model":"m"}"#));
        assert!(!wants_stream(br#"{"stream":false}"#));
        assert!(!wants_stream(br#"{"model":"m"}"#));
    }
}
