// An app on the Copilot SDK with two named BYOK providers, "alpha" and "beta", each with its
// own scope, whose bearerTokenProvider callbacks are answered by the npm package `tokenrelay`
// (its bearerTokenProvider, over the binary of @tokenrelay/linux-x64). It alternates model
// turns between the providers over several token lifetimes and prints one JSON line: answers,
// how many times the runtime asked for a token per provider, how many times the package ran
// the helper per provider, and the scope claim of every token it was given (to show they stay
// partitioned). Token bytes are never printed.
//
// Usage: node copilot-sdk-app.mjs   (env: E2E_SDK_ROUNDS, E2E_UPSTREAM, TOKENRELAY_CONFIG,
//        E2E_CACHE_DIR, E2E_COPILOT_HOME, E2E_WORKDIR)
import { CopilotClient, approveAll } from "@github/copilot-sdk";
import { bearerTokenProvider as tokenrelayProvider, binaryPath } from "tokenrelay";

const rounds = Number(process.env.E2E_SDK_ROUNDS ?? "4");
const gapMs = Number(process.env.E2E_SDK_GAP_MS ?? "1000");
const upstream = process.env.E2E_UPSTREAM;
const asked = { alpha: 0, beta: 0 };
const helperRuns = { alpha: 0, beta: 0 };
const scopes = { alpha: new Set(), beta: new Set() };

function scopeOf(token) {
  const payload = JSON.parse(Buffer.from(token.split(".")[1], "base64url").toString());
  return payload.scp;
}

// One provider for both: the SDK's providerName picks the [[provider]] table.
const fromTokenrelay = tokenrelayProvider({
  config: process.env.TOKENRELAY_CONFIG,
  cacheDir: process.env.E2E_CACHE_DIR,
  onToken: ({ providerName }) => {
    helperRuns[providerName] = (helperRuns[providerName] ?? 0) + 1;
  },
});
const bearerTokenProvider = async (args) => {
  asked[args.providerName] = (asked[args.providerName] ?? 0) + 1;
  const token = await fromTokenrelay(args);
  (scopes[args.providerName] ??= new Set()).add(scopeOf(token));
  return token;
};

const client = new CopilotClient({
  baseDirectory: process.env.E2E_COPILOT_HOME,
  workingDirectory: process.env.E2E_WORKDIR,
  logLevel: "error",
  env: { ...process.env, COPILOT_OFFLINE: "true", COPILOT_AUTO_UPDATE: "false" },
});
const answers = [];
let failure = null;
try {
  await client.start();
  const session = await client.createSession({
    model: "alpha/gpt-4o",
    providers: [
      { name: "alpha", type: "openai", baseUrl: `${upstream}/alpha/v1`, bearerTokenProvider },
      { name: "beta", type: "openai", baseUrl: `${upstream}/beta/v1`, bearerTokenProvider },
    ],
    models: [
      { id: "gpt-4o", provider: "alpha" },
      { id: "gpt-4o", provider: "beta" },
    ],
    onPermissionRequest: approveAll,
  });
  for (let i = 0; i < rounds; i++) {
    const provider = i % 2 === 0 ? "alpha" : "beta";
    await session.setModel(`${provider}/gpt-4o`);
    const prompt = `round ${i} via ${provider} ${process.env.E2E_SDK_DIRECTIVES ?? ""}`.trim();
    const reply = await session.sendAndWait({ prompt }, 60_000);
    answers.push({ provider, text: reply?.data?.content ?? null });
    await new Promise((r) => setTimeout(r, gapMs));
  }
  await session.disconnect?.();
} catch (e) {
  failure = String(e?.message ?? e);
} finally {
  await client.stop();
}
const out = {
  ok: failure === null,
  failure,
  answers,
  asked,
  helperRuns,
  binary: binaryPath(),
  scopes: Object.fromEntries(Object.entries(scopes).map(([k, v]) => [k, [...v]])),
};
console.log(JSON.stringify(out));
process.exit(failure === null ? 0 : 1);
