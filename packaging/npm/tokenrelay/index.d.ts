/** Options of {@link bearerTokenProvider}: the `tokenrelay token` flags of the same names. */
export interface TokenProviderOptions {
  /** TOML file with `[[provider]]` tables (`--config`). */
  config?: string;
  /** Which provider of `config`; without it, the `providerName` the SDK passes picks one. */
  provider?: string;
  /** Shell command that prints a token (`--token-command`). Exclusive with config, file, env. */
  command?: string;
  /** File that holds a token (`--token-file`). */
  file?: string;
  /** Environment variable that holds a token (`--token-env`). */
  env?: string;
  /** Scope to ask the source for (`--scope`). */
  scope?: string;
  /** How to read the source's output: auto, raw, jwt, json, exec-credential (`--format`). */
  format?: string;
  /** Time limit of one acquisition: seconds, or a duration such as "30s" (`--timeout`). */
  timeout?: number | string;
  /** Lifetime assumed when none is known: seconds or "15m" (`--default-ttl`). */
  defaultTtl?: number | string;
  /** Directory of the shared cache (`--cache-dir`). */
  cacheDir?: string;
  /** Acquire from the source on every helper run (`--no-cache`). */
  noCache?: boolean;
  /** The tokenrelay binary to run (default: the one of the installed platform package). */
  binary?: string;
  /** Time limit of one helper run, in milliseconds (default 60000). */
  callTimeoutMs?: number;
  /** Called after each helper run; never sees the token. */
  onToken?: (info: { providerName: string | undefined; expiresOnTimestamp?: number; source: string }) => void;
}

/** A token with its times in milliseconds since the epoch (the `@azure/core-auth` names). */
export interface Token {
  readonly token: string;
  readonly expiresOnTimestamp?: number;
  readonly refreshAfterTimestamp?: number;
  readonly source: string;
}

/** What an SDK passes: the Copilot SDK's `{ providerName, sessionId }`, or nothing. */
export type ProviderArgs = { providerName?: string; provider_name?: string; [key: string]: unknown } | undefined;

/** A callable token provider: `await tokens(args)` is the token string. */
export interface TokenProvider {
  (args?: ProviderArgs): Promise<string>;
  /** The token with its expiry and refresh time. */
  getToken(args?: ProviderArgs): Promise<Token>;
  /** Forget the token (after a 401): the next call runs `tokenrelay token --invalidate`. */
  invalidate(args?: ProviderArgs): void;
}

/** The error a provider rejects with: the helper's one-line cause, never a token. */
export class TokenRelayError extends Error {}

/**
 * A provider for the Copilot SDK's `bearerTokenProvider`: one helper run per token lifetime
 * (shared with every other process through the helper's on-disk cache), a warm call in
 * microseconds, one refresh at a time.
 */
export function bearerTokenProvider(options?: TokenProviderOptions): TokenProvider;

/** The same as {@link bearerTokenProvider}, for `new AzureOpenAI({ azureADTokenProvider })`. */
export function azureADTokenProvider(options?: TokenProviderOptions): TokenProvider;

/** Absolute path of the packaged binary (or `$TOKENRELAY_BINARY`). */
export function binaryPath(): string;

/** The npm package carrying the binary for a platform, e.g. "@tokenrelay/linux-x64". */
export function platformPackage(platform?: string, arch?: string): string;
