//! The hyper floor for `bench/run`: the least a hyper-based injecting reverse proxy can do,
//! with none of tokenrelay's logic (no token cache, routing, stripping, metrics, retry or
//! coalescing). One thread per CPU, each with a single-threaded runtime and its own
//! `SO_REUSEPORT` socket (tokenrelay's and nginx's worker model); every client connection gets
//! one keep-alive upstream connection of its own (nginx's `keepalive` pairs them similarly),
//! and each request gets a static `Authorization` header. It tells how much of the gap between
//! tokenrelay and nginx belongs to hyper itself.
//!
//! Run: `bench-hyper-proxy --listen 127.0.0.1:PORT --upstream 127.0.0.1:PORT --token T [--threads N]`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::client::conn::http1 as client;
use hyper::header::{HeaderValue, AUTHORIZATION, HOST};
use hyper::server::conn::http1 as server;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Mutex;

struct Args {
    listen: SocketAddr,
    upstream: SocketAddr,
    token: String,
    threads: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut listen = None;
    let mut upstream = None;
    let mut token = None;
    let mut threads = std::thread::available_parallelism().map_or(1, usize::from);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--listen" => listen = Some(value.parse().map_err(|e| format!("--listen: {e}"))?),
            "--upstream" => upstream = Some(value.parse().map_err(|e| format!("--upstream: {e}"))?),
            "--token" => token = Some(value),
            "--threads" => threads = value.parse().map_err(|e| format!("--threads: {e}"))?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(Args {
        listen: listen.ok_or("--listen is required")?,
        upstream: upstream.ok_or("--upstream is required")?,
        token: token.ok_or("--token is required")?,
        threads: threads.max(1),
    })
}

type Sender = Arc<Mutex<Option<client::SendRequest<Incoming>>>>;

fn bad_gateway() -> Response<http_body_util::Either<Incoming, http_body_util::Empty<bytes::Bytes>>>
{
    let mut r = Response::new(http_body_util::Either::Right(http_body_util::Empty::new()));
    *r.status_mut() = StatusCode::BAD_GATEWAY;
    r
}

async fn forward(
    upstream: SocketAddr,
    host: HeaderValue,
    auth: HeaderValue,
    sender: Sender,
    mut req: Request<Incoming>,
) -> Response<http_body_util::Either<Incoming, http_body_util::Empty<bytes::Bytes>>> {
    req.headers_mut().insert(AUTHORIZATION, auth);
    req.headers_mut().insert(HOST, host);
    let mut slot = sender.lock().await;
    if slot.as_ref().is_none_or(client::SendRequest::is_closed) {
        let Ok(stream) = TcpStream::connect(upstream).await else {
            return bad_gateway();
        };
        let _ = stream.set_nodelay(true);
        let Ok((tx, conn)) = client::handshake(TokioIo::new(stream)).await else {
            return bad_gateway();
        };
        tokio::spawn(conn);
        *slot = Some(tx);
    }
    let Some(tx) = slot.as_mut() else {
        return bad_gateway();
    };
    if tx.ready().await.is_err() {
        *slot = None;
        return bad_gateway();
    }
    let sent = tx.send_request(req);
    drop(slot);
    match sent.await {
        Ok(resp) => resp.map(http_body_util::Either::Left),
        Err(_) => bad_gateway(),
    }
}

fn worker(listen: SocketAddr, upstream: SocketAddr, token: &str) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let auth = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|e| e.to_string())?;
    let host = HeaderValue::from_str(&upstream.to_string()).map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let socket = if listen.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(|e| format!("socket: {e}"))?;
        let listener = socket
            .set_reuseport(true)
            .and_then(|()| socket.bind(listen))
            .and_then(|()| socket.listen(1024))
            .map_err(|e| format!("listen on {listen}: {e}"))?;
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let sender: Sender = Arc::new(Mutex::new(None));
            let (auth, host) = (auth.clone(), host.clone());
            let svc = service_fn(move |req| {
                let (auth, host, sender) = (auth.clone(), host.clone(), sender.clone());
                async move { Ok::<_, Infallible>(forward(upstream, host, auth, sender, req).await) }
            });
            tokio::spawn(server::Builder::new().serve_connection(TokioIo::new(stream), svc));
        }
    })
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench-hyper-proxy: {e}");
            std::process::exit(2);
        }
    };
    let threads: Vec<_> = (0..args.threads)
        .map(|_| {
            let (listen, upstream, token) = (args.listen, args.upstream, args.token.clone());
            std::thread::spawn(move || worker(listen, upstream, &token))
        })
        .collect();
    for t in threads {
        if let Ok(Err(e)) = t.join() {
            eprintln!("bench-hyper-proxy: {e}");
            std::process::exit(1);
        }
    }
}
