// Where the tokenrelay binary of this install is: the optional dependency
// @tokenrelay/<platform>-<arch> that npm picked for this machine (the esbuild / @github/copilot
// pattern), never a `tokenrelay` found on PATH. TOKENRELAY_BINARY overrides it.
import { createRequire } from "node:module";
import { existsSync } from "node:fs";

const require = createRequire(import.meta.url);

/** The npm package that carries the binary for this platform, e.g. "@tokenrelay/linux-x64". */
export function platformPackage(platform = process.platform, arch = process.arch) {
  return `@tokenrelay/${platform}-${arch}`;
}

/** Absolute path of the packaged binary; throws with the fix when it is missing. */
export function binaryPath() {
  const override = process.env.TOKENRELAY_BINARY;
  if (override) return override;
  const pkg = platformPackage();
  const exe = process.platform === "win32" ? "tokenrelay.exe" : "tokenrelay";
  let path;
  try {
    path = require.resolve(`${pkg}/bin/${exe}`);
  } catch {
    throw new Error(
      `tokenrelay: no binary for ${process.platform}-${process.arch}: the optional dependency ${pkg} ` +
        `is not installed (reinstall without --omit=optional / --no-optional, or set TOKENRELAY_BINARY)`,
    );
  }
  if (!existsSync(path)) throw new Error(`tokenrelay: ${path} is missing (reinstall ${pkg})`);
  return path;
}
