// Unit tests of the npm package's provider and launcher against a stand-in `tokenrelay` (a
// script answering `token --output json` as the real helper does, from a plan file, logging its
// argv). Run: node --test packaging/npm/test/   (no dependencies)
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync, readFileSync, existsSync, chmodSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { bearerTokenProvider, azureADTokenProvider, TokenRelayError, platformPackage } from "../tokenrelay/index.js";

const FAKE = `#!/usr/bin/env node
const fs = require("fs"), path = require("path");
const d = __dirname;
fs.appendFileSync(path.join(d, "log"), JSON.stringify(process.argv.slice(2)) + "\\n");
const plan = JSON.parse(fs.readFileSync(path.join(d, "plan"), "utf8"));
const n = fs.readFileSync(path.join(d, "log"), "utf8").trim().split("\\n").length;
setTimeout(() => {
  if (plan.fail) { process.stderr.write("tokenrelay: command source: exited 1\\n"); process.exit(1); }
  if (plan.raw !== undefined) { process.stdout.write(plan.raw); process.exit(0); }
  const now = Date.now(), out = { token: "tok-" + n, source: "command" };
  if (plan.lifetime !== null) { out.expiresOnTimestamp = now + plan.lifetime * 1000; out.refreshAfterTimestamp = now + plan.refresh * 1000; }
  console.log(JSON.stringify(out));
}, (plan.sleep ?? 0) * 1000);
`;

function fake() {
  const dir = mkdtempSync(join(tmpdir(), "tokenrelay-npm-test-"));
  const bin = join(dir, "tokenrelay.cjs");
  writeFileSync(bin, FAKE);
  chmodSync(bin, 0o755);
  const f = {
    dir,
    bin,
    plan: (p) => writeFileSync(join(dir, "plan"), JSON.stringify({ lifetime: 60, refresh: 40, ...p })),
    runs: () =>
      existsSync(join(dir, "log"))
        ? readFileSync(join(dir, "log"), "utf8").trim().split("\n").filter(Boolean).map((l) => JSON.parse(l))
        : [],
    done: () => rmSync(dir, { recursive: true, force: true }),
  };
  f.plan({});
  return f;
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

test("warm calls run the helper once", async () => {
  const f = fake();
  const p = bearerTokenProvider({ command: "idp", binary: f.bin });
  const got = await Promise.all(Array.from({ length: 50 }, () => p()));
  assert.deepEqual(new Set(got), new Set(["tok-1"]));
  for (let i = 0; i < 50; i++) assert.equal(await p(), "tok-1");
  assert.equal(f.runs().length, 1);
  assert.deepEqual(f.runs()[0].slice(0, 3), ["token", "--output", "json"]);
  const t = await p.getToken();
  assert.ok(t.expiresOnTimestamp > t.refreshAfterTimestamp);
  f.done();
});

test("a due token is served while one background refresh runs", async () => {
  const f = fake();
  f.plan({ lifetime: 30, refresh: 0.2 });
  const p = bearerTokenProvider({ command: "idp", binary: f.bin });
  assert.equal(await p(), "tok-1");
  await sleep(300);
  f.plan({ lifetime: 30, refresh: 20, sleep: 0.3 });
  for (let i = 0; i < 10; i++) assert.equal(await p(), "tok-1");
  const deadline = Date.now() + 5000;
  while ((await p()) === "tok-1" && Date.now() < deadline) await sleep(50);
  assert.equal(await p(), "tok-2");
  assert.equal(f.runs().length, 2);
  f.done();
});

test("a failure keeps the valid token and backs off; without one it rejects with the cause", async () => {
  const f = fake();
  f.plan({ lifetime: 30, refresh: 0.2 });
  const p = bearerTokenProvider({ command: "idp", binary: f.bin });
  await p();
  await sleep(300);
  f.plan({ fail: true });
  // The background refresh fails; the valid token is served throughout, and after the failure
  // the next run waits for the 1 s backoff (not one per call).
  const deadline = Date.now() + 10_000;
  while (f.runs().length < 2 && Date.now() < deadline) {
    assert.equal(await p(), "tok-1");
    await sleep(10);
  }
  await sleep(100);
  for (let i = 0; i < 30; i++) {
    assert.equal(await p(), "tok-1");
    await sleep(10);
  }
  assert.ok(f.runs().length <= 3, `${f.runs().length} runs for 30 calls`); // 2, or 3 on a slow machine
  const q = bearerTokenProvider({ command: "idp", binary: f.bin });
  await assert.rejects(q(), (e) => e instanceof TokenRelayError && e.message === "tokenrelay token: tokenrelay: command source: exited 1");
  f.done();
});

test("bad output, expired tokens and missing binaries are refused", async () => {
  const f = fake();
  for (const [raw, cause] of [["nope", "output is not JSON"], ['{"token":""}', "no token in its output"]]) {
    f.plan({ raw });
    await assert.rejects(bearerTokenProvider({ command: "c", binary: f.bin })(), new RegExp(cause));
  }
  f.plan({ lifetime: -1, refresh: -2 });
  await assert.rejects(bearerTokenProvider({ command: "c", binary: f.bin })(), /already expired/);
  await assert.rejects(bearerTokenProvider({ command: "c", binary: join(f.dir, "nope") })(), TokenRelayError);
  assert.throws(() => bearerTokenProvider({ config: "a", command: "b" }), TypeError);
  f.done();
});

test("tokens without expiry are asked for every time; invalidate re-runs with --invalidate", async () => {
  const f = fake();
  f.plan({ lifetime: null });
  const p = bearerTokenProvider({ command: "c", binary: f.bin });
  assert.deepEqual([await p(), await p()], ["tok-1", "tok-2"]);
  f.plan({});
  const q = bearerTokenProvider({ command: "c", binary: f.bin });
  await q();
  q.invalidate();
  assert.equal(await q(), "tok-4");
  assert.ok(f.runs()[3].includes("--invalidate"));
  assert.equal(await q(), "tok-4");
  assert.equal(f.runs().length, 4);
  f.done();
});

test("invalidate during a run drops that run's token", async () => {
  const f = fake();
  f.plan({ sleep: 0.4 });
  const p = bearerTokenProvider({ command: "c", binary: f.bin });
  const first = p();
  await sleep(200);
  p.invalidate();
  assert.equal(await first, "tok-1");
  assert.equal(await p(), "tok-2");
  assert.ok(f.runs()[1].includes("--invalidate"));
  f.done();
});

test("the SDK's providerName selects the config table; a flag source ignores it", async () => {
  const f = fake();
  const p = azureADTokenProvider({ config: "/etc/t.toml", binary: f.bin });
  assert.equal(await p({ providerName: "alpha", sessionId: "s" }), "tok-1");
  assert.equal(await p({ providerName: "beta" }), "tok-2");
  assert.equal(await p({ providerName: "alpha" }), "tok-1");
  assert.deepEqual(f.runs()[0].slice(-2), ["--provider", "alpha"]);
  assert.deepEqual(f.runs()[1].slice(-2), ["--provider", "beta"]);
  const q = bearerTokenProvider({ command: "c", binary: f.bin, scope: "s", timeout: 1.5, defaultTtl: "15m", cacheDir: "/x", noCache: true });
  await q({ providerName: "alpha" });
  await q({ providerName: "beta" });
  assert.equal(f.runs().length, 3);
  const argv = f.runs()[2];
  assert.ok(!argv.includes("--provider"));
  for (const [k, v] of [["--scope", "s"], ["--timeout", "1500ms"], ["--default-ttl", "15m"], ["--cache-dir", "/x"]]) {
    assert.equal(argv[argv.indexOf(k) + 1], v);
  }
  assert.ok(argv.includes("--no-cache"));
  f.done();
});

test("platform package names follow the optionalDependencies", () => {
  const pkg = JSON.parse(readFileSync(new URL("../tokenrelay/package.json", import.meta.url), "utf8"));
  for (const [os, arch] of [["linux", "x64"], ["linux", "arm64"], ["darwin", "x64"], ["darwin", "arm64"]]) {
    assert.equal(pkg.optionalDependencies[platformPackage(os, arch)], pkg.version);
  }
});
