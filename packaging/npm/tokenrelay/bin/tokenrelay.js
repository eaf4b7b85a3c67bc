#!/usr/bin/env node
// `npx tokenrelay …` / the `tokenrelay` command of `npm install -g tokenrelay`: runs the packaged
// binary with the same arguments, stdio and environment, forwards SIGINT/SIGTERM/SIGHUP to it,
// and exits as it exited (the same code, or the same signal).
import { spawn } from "node:child_process";
import { binaryPath } from "../binary.js";

let bin;
try {
  bin = binaryPath();
} catch (e) {
  console.error(e.message);
  process.exit(1);
}
const child = spawn(bin, process.argv.slice(2), { stdio: "inherit" });
const forward = ["SIGINT", "SIGTERM", "SIGHUP"];
for (const sig of forward) process.on(sig, () => child.kill(sig));
child.on("error", (e) => {
  console.error(`tokenrelay: cannot run ${bin}: ${e.message}`);
  process.exit(1);
});
child.on("exit", (code, signal) => {
  if (signal) {
    for (const sig of forward) process.removeAllListeners(sig);
    process.kill(process.pid, signal);
    return;
  }
  process.exit(code ?? 1);
});
