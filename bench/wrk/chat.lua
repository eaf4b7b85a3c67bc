-- wrk script for bench/run: POST a small chat-completions request (SSE when BENCH_STREAM=1)
-- and print one machine-readable RESULT line with exact latency percentiles in microseconds.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
if os.getenv("BENCH_STREAM") == "1" then
  wrk.body = '{"model":"bench","stream":true,"messages":[{"role":"user","content":"hi"}]}'
else
  wrk.body = '{"model":"bench","messages":[{"role":"user","content":"hi"}]}'
end
local auth = os.getenv("BENCH_AUTH")
if auth and auth ~= "" then
  wrk.headers["Authorization"] = auth
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_us=%d p50_us=%.1f p90_us=%.1f p99_us=%.1f mean_us=%.1f max_us=%d errors=%d non2xx=%d\n",
    summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.mean, latency.max,
    e.connect + e.read + e.write + e.timeout, e.status))
end
