//! Micro-benchmarks of the hot path: a warm cache hit and the per-request header injection.
//!
//! Run: `cargo bench -p tokenrelay --bench cache` (or `bash bench/run`, which also runs the
//! end-to-end benchmarks and writes docs-ready figures). The target for a warm hit is ≤ 100 ns.

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use criterion::{criterion_group, criterion_main, Criterion};
use http::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION};
use tokenrelay::inject::Style as Inject;
use tokenrelay::{Cache, CacheEntry, Result, Secret, Source, Token, TokenRequest};

/// A source whose tokens live an hour, so a benchmark never reaches the refresh window.
#[derive(Debug)]
struct LongLived;

#[async_trait]
impl Source for LongLived {
    async fn acquire(&self, _req: &TokenRequest) -> Result<Token> {
        let now = SystemTime::now();
        Ok(
            Token::new(Secret::new("bench-token-0123456789abcdef"), "bench")
                .acquired_at(now)
                .expires_at(now + Duration::from_secs(3600)),
        )
    }
    fn kind(&self) -> &'static str {
        "bench"
    }
    fn describe(&self) -> String {
        "bench".into()
    }
}

fn runtime() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("tokio runtime: {e}"),
    }
}

/// A warm entry: one acquisition done, the token an hour from expiry.
fn warm_entry(rt: &tokio::runtime::Runtime) -> CacheEntry {
    let entry = Cache::new(Arc::new(LongLived)).entry(TokenRequest::new("p"));
    if let Err(e) = rt.block_on(entry.get()) {
        panic!("warm-up acquisition failed: {e}");
    }
    entry
}

/// What a hit cannot avoid, measured in the same run as the ratio's denominator: reading the
/// clock (the expiry check) and one lock-free load of a shared `Arc` (the held token).
fn baseline(c: &mut Criterion) {
    let mut g = c.benchmark_group("baseline");
    g.bench_function("system_time_now", |b| {
        b.iter(|| black_box(SystemTime::now()))
    });
    let slot: ArcSwapOption<u64> = ArcSwapOption::from_pointee(7);
    g.bench_function("arc_swap_load_full", |b| {
        b.iter(|| black_box(slot.load_full()))
    });
    g.finish();
}

fn cache_hit(c: &mut Criterion) {
    let rt = runtime();
    let entry = warm_entry(&rt);
    let mut g = c.benchmark_group("cache_hit");
    g.bench_function("try_get", |b| b.iter(|| black_box(entry.try_get())));
    g.bench_function("get_await", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(entry.get().await.ok()) })
    });
    g.bench_function("get_with_min_remaining_await", |b| {
        b.to_async(&rt).iter(|| async {
            black_box(
                entry
                    .get_with_min_remaining(Duration::from_secs(120))
                    .await
                    .ok(),
            )
        })
    });
    // Two threads hitting one entry at once (the proxy's two tokio workers): both clone the
    // same `Arc`, so this shows the cost of sharing its reference count's cache line.
    g.bench_function("try_get_2_threads", |b| {
        b.iter_custom(|iters| {
            let start = Arc::new(Barrier::new(2));
            let other = {
                let entry = entry.clone();
                let start = start.clone();
                std::thread::spawn(move || {
                    start.wait();
                    for _ in 0..iters {
                        black_box(entry.try_get());
                    }
                })
            };
            start.wait();
            let t = Instant::now();
            for _ in 0..iters {
                black_box(entry.try_get());
            }
            let elapsed = t.elapsed();
            let _ = other.join();
            elapsed
        })
    });
    g.finish();
}

/// The proxy's per-request injection (`proxy::forward`): look up the header value cached for
/// the token's generation and put it on the request; and the once-per-token cost of building it.
fn injection(c: &mut Criterion) {
    let rt = runtime();
    let entry = warm_entry(&rt);
    let lease = match entry.try_get() {
        Some(l) => l,
        None => panic!("warm entry has no token"),
    };
    let inject = Inject::Bearer;
    let mut g = c.benchmark_group("inject");
    g.bench_function("build_header_value_per_token", |b| {
        b.iter(|| {
            let text = inject.header_value(black_box(lease.token().secret().expose()));
            let mut v = HeaderValue::from_str(&text).ok();
            if let Some(v) = v.as_mut() {
                v.set_sensitive(true);
            }
            black_box(v)
        })
    });

    let mut value = HeaderValue::from_str(&inject.header_value(lease.token().secret().expose()))
        .unwrap_or_else(|_| HeaderValue::from_static("x"));
    value.set_sensitive(true);
    let cached: ArcSwapOption<(u64, HeaderValue)> =
        ArcSwapOption::from_pointee((lease.generation(), value));
    let mut headers = HeaderMap::new();
    for (k, v) in [
        ("host", "127.0.0.1:8787"),
        ("user-agent", "OpenAI/Python 1.0"),
        ("content-type", "application/json"),
        ("accept", "application/json"),
        ("content-length", "64"),
    ] {
        headers.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
    }
    g.bench_function("cached_value_insert_per_request", |b| {
        b.iter(|| {
            let generation = black_box(lease.generation());
            if let Some(hit) = cached.load().as_ref() {
                if hit.0 == generation {
                    headers.insert(AUTHORIZATION, hit.1.clone());
                }
            }
            black_box(&headers);
        })
    });
    g.finish();
}

criterion_group!(benches, baseline, cache_hit, injection);
criterion_main!(benches);
