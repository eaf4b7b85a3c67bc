//! Per-provider counters, rendered in the Prometheus text format. Labels are provider names
//! and status codes only: never anything from a token.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::guard::Refusal;

/// Upper bounds (seconds) of the latency histogram buckets.
pub(crate) const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Counters for one provider: one shard per worker thread, summed when rendered.
///
/// A worker counts a request in its own shard only, so the counters add no traffic between
/// CPUs: with one shared set, every request's increments would move the counters' cache
/// lines from one core to the other (nginx's workers, separate processes, share nothing
/// either).
#[derive(Debug)]
pub(crate) struct ProviderMetrics {
    shards: Box<[Counters]>,
}

/// One worker's counters for one provider. Lock-free: every field is an atomic. Aligned to
/// two cache lines (the adjacent-line prefetcher pairs them) so that shards side by side
/// never share one.
#[derive(Debug)]
#[repr(align(128))]
pub(crate) struct Counters {
    pub requests: AtomicU64,
    pub retries: AtomicU64,
    pub proxy_errors: AtomicU64,
    /// Requests refused for a missing or wrong local key (not counted as responses: they
    /// never reached the upstream and say nothing about its credential).
    pub local_key_rejections: AtomicU64,
    status: Box<[AtomicU64]>,
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            requests: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            proxy_errors: AtomicU64::new(0),
            local_key_rejections: AtomicU64::new(0),
            status: (0..600).map(|_| AtomicU64::new(0)).collect(),
            buckets: Default::default(),
            latency_count: AtomicU64::new(0),
            latency_sum_us: AtomicU64::new(0),
        }
    }
}

impl Counters {
    /// Counts a request.
    pub(crate) fn request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_status(&self, status: u16) {
        if let Some(c) = self.status.get(usize::from(status)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records time to response headers: one increment, in the first bucket that holds it
    /// (the renderer makes the counts cumulative).
    pub(crate) fn record_latency(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|bound| secs <= *bound) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }
}

impl ProviderMetrics {
    /// Counters with one shard per worker (at least one).
    pub(crate) fn new(workers: usize) -> Self {
        ProviderMetrics {
            shards: (0..workers.max(1)).map(|_| Counters::default()).collect(),
        }
    }

    /// The shard of worker `worker`.
    pub(crate) fn shard(&self, worker: usize) -> &Counters {
        &self.shards[worker % self.shards.len()]
    }

    /// The sum of one counter over all shards.
    pub(crate) fn total(&self, counter: impl Fn(&Counters) -> &AtomicU64) -> u64 {
        self.shards
            .iter()
            .map(|s| counter(s).load(Ordering::Relaxed))
            .sum()
    }
}

/// Counters of the listeners, shared by every worker: they change once per connection (or
/// per refused request), never on a proxied request's path.
#[derive(Debug, Default)]
pub(crate) struct ListenerMetrics {
    /// Connections open now.
    pub open: AtomicU64,
    /// Connections closed at once because the listener was at `max_connections`.
    pub conns_refused: AtomicU64,
    /// Requests refused before routing or forwarding, by [`Refusal::index`].
    refusals: [AtomicU64; Refusal::ALL.len()],
}

impl ListenerMetrics {
    /// Counts a request refused for `why`.
    pub(crate) fn refused(&self, why: Refusal) {
        self.refusals[why.index()].fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String) {
        for ((name, kind, help), value) in [
            (
                (
                    "tokenrelay_connections_open",
                    "gauge",
                    "Client connections open now, over all listeners.",
                ),
                &self.open,
            ),
            (
                (
                    "tokenrelay_connections_refused_total",
                    "counter",
                    "Client connections answered 503 and closed because a listener was at max_connections.",
                ),
                &self.conns_refused,
            ),
        ] {
            family(out, name, kind, help);
            let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
        }
        family(
            out,
            "tokenrelay_requests_refused_total",
            "counter",
            "Requests refused before any token was used: foreign Host, browser Origin, TRACE/CONNECT, a path climbing above the base path.",
        );
        for why in Refusal::ALL {
            let _ = writeln!(
                out,
                "tokenrelay_requests_refused_total{{reason=\"{}\"}} {}",
                why.label(),
                self.refusals[why.index()].load(Ordering::Relaxed)
            );
        }
    }
}

/// What the renderer needs from each provider.
pub(crate) struct Sample<'a> {
    pub provider: &'a str,
    pub metrics: &'a ProviderMetrics,
    pub acquisitions: u64,
    pub refresh_failures: u64,
    pub seconds_until_expiry: Option<f64>,
    pub ready: bool,
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// One metric family with a `{provider}` sample per provider; `value` gives the sample's value
/// text, or `None` to leave that provider out.
fn per_provider(
    out: &mut String,
    samples: &[Sample<'_>],
    (name, kind, help): (&str, &str, &str),
    value: impl Fn(&Sample<'_>) -> Option<String>,
) {
    family(out, name, kind, help);
    for s in samples {
        if let Some(v) = value(s) {
            let _ = writeln!(out, "{name}{{provider=\"{}\"}} {v}", s.provider);
        }
    }
}

fn load(m: &ProviderMetrics, counter: impl Fn(&Counters) -> &AtomicU64) -> Option<String> {
    Some(m.total(counter).to_string())
}

/// Renders the listeners' and all providers' metrics.
pub(crate) fn render(listeners: &ListenerMetrics, samples: &[Sample<'_>]) -> String {
    let mut out = String::with_capacity(4096);
    listeners.render(&mut out);
    per_provider(
        &mut out,
        samples,
        (
            "tokenrelay_requests_total",
            "counter",
            "Requests received per provider.",
        ),
        |s| load(s.metrics, |c| &c.requests),
    );
    family(
        &mut out,
        "tokenrelay_responses_total",
        "counter",
        "Responses sent per provider and HTTP status (upstream or the proxy's own).",
    );
    for s in samples {
        for code in 0..s.metrics.shard(0).status.len() {
            let n = s.metrics.total(|c| &c.status[code]);
            if n > 0 {
                let _ = writeln!(
                    out,
                    "tokenrelay_responses_total{{provider=\"{}\",status=\"{code}\"}} {n}",
                    s.provider
                );
            }
        }
    }
    per_provider(
        &mut out,
        samples,
        (
            "tokenrelay_retries_total",
            "counter",
            "Requests retried once after the upstream rejected the credential.",
        ),
        |s| load(s.metrics, |c| &c.retries),
    );
    per_provider(
        &mut out,
        samples,
        (
            "tokenrelay_proxy_errors_total",
            "counter",
            "Requests answered with the proxy's own error (no token, upstream unreachable).",
        ),
        |s| load(s.metrics, |c| &c.proxy_errors),
    );
    per_provider(
        &mut out,
        samples,
        (
            "tokenrelay_local_key_rejections_total",
            "counter",
            "Requests refused because the local key was missing or wrong.",
        ),
        |s| load(s.metrics, |c| &c.local_key_rejections),
    );
    per_provider(
        &mut out,
        samples,
        (
            "tokenrelay_token_acquisitions_total",
            "counter",
            "Successful token acquisitions from the source.",
        ),
        |s| Some(s.acquisitions.to_string()),
    );
    per_provider(
        &mut out,
        samples,
        (
            "tokenrelay_token_refresh_failures_total",
            "counter",
            "Failed token acquisitions from the source.",
        ),
        |s| Some(s.refresh_failures.to_string()),
    );
    per_provider(
        &mut out,
        samples,
        (
            "tokenrelay_token_expiry_seconds",
            "gauge",
            "Seconds until the held token expires (absent when none is held).",
        ),
        |s| s.seconds_until_expiry.map(|secs| format!("{secs:.3}")),
    );
    per_provider(
        &mut out,
        samples,
        (
            "tokenrelay_provider_ready",
            "gauge",
            "1 when the provider holds a valid token.",
        ),
        |s| Some(u8::from(s.ready).to_string()),
    );
    family(
        &mut out,
        "tokenrelay_upstream_latency_seconds",
        "histogram",
        "Time from request to upstream response headers, including token retrieval and any retry.",
    );
    for s in samples {
        let m = s.metrics;
        let mut cumulative = 0;
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            cumulative += m.total(|c| &c.buckets[i]);
            let _ = writeln!(
                out,
                "tokenrelay_upstream_latency_seconds_bucket{{provider=\"{}\",le=\"{bound}\"}} {cumulative}",
                s.provider,
            );
        }
        let count = m.total(|c| &c.latency_count);
        let _ = writeln!(
            out,
            "tokenrelay_upstream_latency_seconds_bucket{{provider=\"{}\",le=\"+Inf\"}} {count}",
            s.provider
        );
        let _ = writeln!(
            out,
            "tokenrelay_upstream_latency_seconds_sum{{provider=\"{}\"}} {:.6}",
            s.provider,
            m.total(|c| &c.latency_sum_us) as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "tokenrelay_upstream_latency_seconds_count{{provider=\"{}\"}} {count}",
            s.provider
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative_and_labels_are_providers_only() {
        let m = ProviderMetrics::new(2);
        // Two workers' shards: the rendered counts are their sums.
        for (worker, ms) in [(0, 0.5), (1, 3.0), (1, 20_000.0)] {
            m.shard(worker)
                .record_latency(Duration::from_secs_f64(ms / 1000.0));
        }
        m.shard(0).record_status(200);
        m.shard(1).record_status(401);
        m.shard(0).record_status(401);
        let text = render(
            &ListenerMetrics::default(),
            &[Sample {
                provider: "azure",
                metrics: &m,
                acquisitions: 2,
                refresh_failures: 1,
                seconds_until_expiry: Some(59.5),
                ready: true,
            }],
        );
        for line in [
            "tokenrelay_upstream_latency_seconds_bucket{provider=\"azure\",le=\"0.001\"} 1",
            "tokenrelay_upstream_latency_seconds_bucket{provider=\"azure\",le=\"0.005\"} 2",
            "tokenrelay_upstream_latency_seconds_bucket{provider=\"azure\",le=\"10\"} 2",
            "tokenrelay_upstream_latency_seconds_bucket{provider=\"azure\",le=\"+Inf\"} 3",
            "tokenrelay_upstream_latency_seconds_count{provider=\"azure\"} 3",
            "tokenrelay_responses_total{provider=\"azure\",status=\"401\"} 2",
            "tokenrelay_responses_total{provider=\"azure\",status=\"200\"} 1",
            "tokenrelay_token_expiry_seconds{provider=\"azure\"} 59.500",
            "tokenrelay_provider_ready{provider=\"azure\"} 1",
        ] {
            assert!(text.contains(line), "missing {line}\n{text}");
        }
    }
}
