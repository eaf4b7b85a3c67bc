// Token providers backed by `tokenrelay token --output json`, cached in process.
//
//   import { bearerTokenProvider, azureADTokenProvider } from "tokenrelay";
//   // Copilot SDK: one [[provider]] table per SDK provider name
//   const tokens = bearerTokenProvider({ config: "/etc/tokenrelay.toml" });
//   providers: [{ name: "alpha", type: "openai", baseUrl, bearerTokenProvider: tokens }]
//   // OpenAI JS SDK
//   new AzureOpenAI({ endpoint, apiVersion, azureADTokenProvider: azureADTokenProvider({ config, provider: "azure" }) });
//
// Per provider name the provider keeps the last token until the helper's refreshAfterTimestamp:
// a warm call does no I/O. When it is due, one call runs the helper (asynchronously: the event
// loop is never blocked) and the others keep the still-valid token (when enough of it is left)
// or wait for that run. The helper's on-disk cache is shared with every other process.
import { execFile } from "node:child_process";
import { binaryPath } from "./binary.js";

/** The most a helper may print (1 MiB). */
const MAX_OUTPUT = 1 << 20;
/** A due token is still handed out while one refresh runs if this much is left (2 min), but never
 * more than half the helper's refresh window (a sixth of a short token's lifetime). */
const MIN_REMAINING_MS = 120_000;
/** Backoff after a failed run while a valid token is held: 1 s doubling to 30 s, at most half of
 * what the token has left. */
const BACKOFF_BASE_MS = 1_000;
const BACKOFF_CAP_MS = 30_000;

export class TokenRelayError extends Error {
  constructor(message) {
    super(message);
    this.name = "TokenRelayError";
  }
}

function durationArg(v) {
  if (v === undefined || v === null) return undefined;
  return typeof v === "number" ? `${Math.round(v * 1000)}ms` : String(v);
}

function providerNameOf(args) {
  const name = args && typeof args === "object" ? (args.providerName ?? args.provider_name) : undefined;
  return typeof name === "string" && name !== "" ? name : undefined;
}

function backoff(failures, remainingMs) {
  let wait = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** Math.min(Math.max(failures - 1, 0), 16));
  if (remainingMs !== undefined) wait = Math.min(wait, Math.max(remainingMs / 2, 50));
  return wait;
}

function parse(stdout, who) {
  let v;
  try {
    v = JSON.parse(stdout);
  } catch {
    throw new TokenRelayError(`${who}: output is not JSON`);
  }
  if (!v || typeof v !== "object" || typeof v.token !== "string" || v.token === "") {
    throw new TokenRelayError(`${who}: no token in its output`);
  }
  const ms = (k) => (typeof v[k] === "number" && Number.isFinite(v[k]) && v[k] >= 0 ? v[k] : undefined);
  return Object.freeze({
    token: v.token,
    expiresOnTimestamp: ms("expiresOnTimestamp"),
    refreshAfterTimestamp: ms("refreshAfterTimestamp"),
    source: typeof v.source === "string" ? v.source : "",
  });
}

function enoughLeft(t, now) {
  if (t.expiresOnTimestamp === undefined) return false;
  const left = t.expiresOnTimestamp - now;
  if (t.refreshAfterTimestamp === undefined) return left > MIN_REMAINING_MS;
  const window = Math.max(t.expiresOnTimestamp - t.refreshAfterTimestamp, 0);
  return left > Math.min(MIN_REMAINING_MS, window / 2);
}

/**
 * A token provider over `tokenrelay token` (see index.d.ts for the options).
 * Returns `(args?) => Promise<string>` with `getToken(args?)` and `invalidate(args?)`.
 */
export function bearerTokenProvider(options = {}) {
  const { config, provider, command, file, env, scope, format, cacheDir, noCache = false, binary, onToken } = options;
  const callTimeoutMs = options.callTimeoutMs ?? 60_000;
  const sources = [config, command, file, env].filter((x) => x !== undefined && x !== null);
  if (sources.length > 1) throw new TypeError("give only one of config, command, file, env");
  if (!(callTimeoutMs > 0)) throw new TypeError("callTimeoutMs must be positive");
  const argv = [];
  const flags = [
    ["--config", config],
    ["--token-command", command],
    ["--token-file", file],
    ["--token-env", env],
    ["--scope", scope],
    ["--format", format],
    ["--timeout", durationArg(options.timeout)],
    ["--default-ttl", durationArg(options.defaultTtl)],
    ["--cache-dir", cacheDir],
  ];
  for (const [flag, value] of flags) if (value !== undefined && value !== null) argv.push(flag, String(value));
  if (noCache) argv.push("--no-cache");
  // A flag-defined source is one provider: the name the SDK passes selects nothing then.
  const byName = provider === undefined && command === undefined && file === undefined && env === undefined;
  const entries = new Map();
  const keyOf = (args) => (provider !== undefined || !byName ? provider : providerNameOf(args));
  const entry = (key) => {
    let e = entries.get(key);
    if (!e) {
      // generation: bumped by invalidate(); a run started before it must not put its token back.
      e = { token: undefined, nextRun: 0, failures: 0, inflight: undefined, invalidate: false, generation: 0 };
      entries.set(key, e);
    }
    return e;
  };

  const run = (key, invalidate) =>
    new Promise((resolve, reject) => {
      const who = `tokenrelay token${key ? ` for provider ${key}` : ""}`;
      let bin;
      try {
        bin = binary ?? binaryPath();
      } catch (e) {
        reject(new TokenRelayError(e.message));
        return;
      }
      const args = ["token", "--output", "json", ...argv];
      if (key) args.push("--provider", key);
      if (invalidate) args.push("--invalidate");
      execFile(bin, args, { timeout: callTimeoutMs, maxBuffer: MAX_OUTPUT, windowsHide: true }, (err, stdout, stderr) => {
        if (err) {
          const cause = err.killed
            ? `no answer within ${callTimeoutMs} ms`
            : String(stderr).trim().split("\n").pop()?.slice(0, 500) || err.message;
          reject(new TokenRelayError(`${who}: ${cause}`));
          return;
        }
        try {
          const t = parse(stdout, who);
          if (t.expiresOnTimestamp !== undefined && t.expiresOnTimestamp <= Date.now()) {
            throw new TokenRelayError(`${who}: the token it gave is already expired`);
          }
          resolve(t);
        } catch (e) {
          reject(e);
        }
      });
    });

  // Runs the helper once for `key`; settles with the new token, or the still-valid old one
  // after a failure (retried after a backoff), or rejects when no valid token is left.
  const fill = (key) => {
    const e = entry(key);
    const generation = e.generation;
    const p = run(key, e.invalidate).then(
      (t) => {
        const now = Date.now();
        e.inflight = undefined;
        if (e.generation !== generation) return t; // invalidated meanwhile: not kept
        e.invalidate = false;
        e.token = t;
        if (t.expiresOnTimestamp === undefined) {
          e.nextRun = 0;
          e.failures = 0;
        } else if (t.refreshAfterTimestamp !== undefined && t.refreshAfterTimestamp > now) {
          e.nextRun = t.refreshAfterTimestamp;
          e.failures = 0;
        } else {
          // Already due: the shared cache served a still-valid token because its source failed.
          e.failures += 1;
          e.nextRun = now + backoff(e.failures, t.expiresOnTimestamp - now);
        }
        onToken?.({ providerName: key, expiresOnTimestamp: t.expiresOnTimestamp, source: t.source });
        return t;
      },
      (err) => {
        const now = Date.now();
        e.inflight = undefined;
        e.failures += 1;
        const t = e.token;
        if (t && (t.expiresOnTimestamp === undefined || t.expiresOnTimestamp > now)) {
          e.nextRun = now + backoff(e.failures, t.expiresOnTimestamp === undefined ? undefined : t.expiresOnTimestamp - now);
          return t;
        }
        e.token = undefined;
        throw err;
      },
    );
    e.inflight = p;
    return p;
  };

  const getToken = async (args) => {
    const key = keyOf(args);
    const e = entry(key);
    const now = Date.now();
    const t = e.token;
    const usable = t !== undefined && (t.expiresOnTimestamp === undefined || t.expiresOnTimestamp > now);
    if (usable && now < e.nextRun) return t;
    if (usable && enoughLeft(t, now)) {
      if (!e.inflight) fill(key).catch(() => {}); // background refresh; the failure is kept in e
      return t;
    }
    return e.inflight ?? fill(key);
  };

  const fn = async (args) => (await getToken(args)).token;
  fn.getToken = getToken;
  fn.invalidate = (args) => {
    const e = entry(keyOf(args));
    e.token = undefined;
    e.nextRun = 0;
    e.invalidate = true;
    e.generation += 1;
  };
  return fn;
}

/** The same as `bearerTokenProvider`, named for `new AzureOpenAI({ azureADTokenProvider })`. */
export const azureADTokenProvider = bearerTokenProvider;

export { binaryPath, platformPackage } from "./binary.js";
