// tokenrelay-bearer.mjs — answer the Copilot SDK's per-provider token callback with tokenrelay.
//
// The Copilot SDK (`@github/copilot-sdk`) lets an app give each BYOK provider a
// `bearerTokenProvider: ({ providerName, sessionId }) => Promise<string>`. The runtime calls it
// before every model request and caches nothing. This module answers it with
// `tokenrelay token --output json`, whose shared on-disk cache (one entry per provider and
// scope, file-locked across processes) runs the real identity source only when the cached token
// nears its expiry: once per token lifetime, not once per request.
//
//   import { tokenrelayBearerTokenProvider } from "./tokenrelay-bearer.mjs";
//   const bearerTokenProvider = tokenrelayBearerTokenProvider({
//     config: "/etc/tokenrelay.toml",          // [[provider]] tables; one per providerName
//   });
//   provider: { name: "azure", type: "openai", baseUrl, bearerTokenProvider }
//
// Options: `command` (the tokenrelay binary, default "tokenrelay" on PATH), `config` (passed as
// --config), `args` (extra arguments, e.g. ["--cache-dir", dir]), `providerArg(name)` (which
// --provider to ask for; default: the SDK's providerName), `timeoutMs` (default 60000),
// `onToken({ providerName, expiresOnTimestamp, source })` (observability hook; never sees the
// token). The token is never logged; a failure rejects with tokenrelay's one-line cause.
import { execFile } from "node:child_process";

export function tokenrelayBearerTokenProvider(options = {}) {
  const {
    command = "tokenrelay",
    config,
    args = [],
    providerArg = (name) => name,
    timeoutMs = 60_000,
    onToken,
  } = options;
  return ({ providerName }) =>
    new Promise((resolve, reject) => {
      const argv = ["token", "--output", "json", ...args];
      if (config) argv.push("--config", config);
      const provider = providerArg(providerName);
      if (provider) argv.push("--provider", provider);
      execFile(command, argv, { timeout: timeoutMs, maxBuffer: 1 << 20 }, (err, stdout, stderr) => {
        if (err) {
          const cause = String(stderr).trim().split("\n").pop() || err.message;
          reject(new Error(`tokenrelay token for provider ${providerName}: ${cause}`));
          return;
        }
        let parsed;
        try {
          parsed = JSON.parse(stdout);
        } catch {
          reject(new Error(`tokenrelay token for provider ${providerName}: output is not JSON`));
          return;
        }
        if (typeof parsed.token !== "string" || parsed.token === "") {
          reject(new Error(`tokenrelay token for provider ${providerName}: no token in its output`));
          return;
        }
        onToken?.({ providerName, expiresOnTimestamp: parsed.expiresOnTimestamp, source: parsed.source });
        resolve(parsed.token);
      });
    });
}
