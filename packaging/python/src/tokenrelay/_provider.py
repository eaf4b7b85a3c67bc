"""Token providers backed by `tokenrelay token --output json`, cached in process.

One `TokenProvider` keeps, per provider name, the last token and the time after which it is
due (the helper's `refreshAfterTimestamp`). Until then a call returns the token without any
I/O. When it is due, exactly one caller (thread or task) runs the helper; the others keep the
still-valid token (when enough of it is left) or wait for that one run. The helper's on-disk
cache is shared with every other process, so N processes with one provider each still cost one
source run per token lifetime.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import sysconfig
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

__all__ = ["Token", "TokenProvider", "AsyncTokenProvider", "TokenRelayError", "bearer_token_provider", "azure_ad_token_provider"]

#: The most a helper may print (1 MiB): anything longer is refused, not parsed.
MAX_OUTPUT = 1 << 20

#: A due token is still handed out, while one refresh runs, if at least this much of it is
#: left (2 minutes), but never more than a sixth of its lifetime: a 60-minute token due after
#: 55 minutes is served for up to 3 more minutes while the refresh runs; a 6-second one for 1 s.
MIN_REMAINING = 120.0

#: After a helper answer whose token is already due (its source failed and the shared cache
#: served the still-valid token), or after a failed run while a valid token is held, the next
#: helper run waits this long (1 s), doubled per consecutive failure...
BACKOFF_BASE = 1.0

#: ...up to this cap (30 s), and never more than half of what the token has left.
BACKOFF_CAP = 30.0


class TokenRelayError(RuntimeError):
    """The helper failed; the message is its one-line cause (never a token)."""


@dataclass(frozen=True)
class Token:
    """A token with its times, in seconds since the epoch (`None` when unknown)."""

    token: str = field(repr=False)
    expires_on: Optional[float]
    refresh_after: Optional[float]
    source: str

    def __repr__(self) -> str:
        return f"Token(token=[redacted], expires_on={self.expires_on!r}, refresh_after={self.refresh_after!r}, source={self.source!r})"

    def remaining(self, now: float) -> Optional[float]:
        """Seconds until expiry, `None` without a known expiry."""
        return None if self.expires_on is None else self.expires_on - now


@dataclass
class _Entry:
    token: Optional[Token] = None
    #: No helper run before this (the refresh time, or a backoff after a failure).
    next_run: float = 0.0
    failures: int = 0
    inflight: Optional["Future[Token]"] = None
    invalidate: bool = False
    #: Bumped by invalidate(): a run started before it must not put its token back.
    generation: int = 0


def _find_binary() -> str:
    """The `tokenrelay` binary installed with this distribution (not the one on PATH)."""
    name = "tokenrelay.exe" if sys.platform == "win32" else "tokenrelay"
    candidates: List[Path] = []
    try:
        from importlib.metadata import PackageNotFoundError, distribution

        try:
            dist = distribution("tokenrelay")
            for f in dist.files or []:
                if f.name == name and f.parent.name in ("bin", "Scripts"):
                    candidates.append(Path(str(dist.locate_file(f))))
        except PackageNotFoundError:
            pass
    except ImportError:  # pragma: no cover - Python < 3.8
        pass
    for scheme in (None, f"{os.name}_user"):
        try:
            scripts = sysconfig.get_path("scripts", scheme) if scheme else sysconfig.get_path("scripts")
        except KeyError:
            continue
        if scripts:
            candidates.append(Path(scripts) / name)
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c.resolve())
    raise TokenRelayError(
        "tokenrelay: the binary installed with the Python package was not found "
        "(reinstall `pip install tokenrelay`, or pass binary=PATH)"
    )


def _provider_name(args: Any) -> Optional[str]:
    """The provider name from the one argument an SDK passes: a dict (Copilot Python SDK:
    `{"provider_name", "session_id"}`; camelCase accepted too) or an object with such an
    attribute. Anything else means no name."""
    if args is None:
        return None
    if isinstance(args, Mapping):
        name = args.get("provider_name", args.get("providerName"))
    else:
        name = getattr(args, "provider_name", None)
    return name if isinstance(name, str) and name else None


def _parse(stdout: bytes, who: str) -> Token:
    if len(stdout) > MAX_OUTPUT:
        raise TokenRelayError(f"{who}: output longer than {MAX_OUTPUT} bytes")
    try:
        v = json.loads(stdout)
    except ValueError:
        raise TokenRelayError(f"{who}: output is not JSON") from None
    if not isinstance(v, dict) or not isinstance(v.get("token"), str) or not v["token"]:
        raise TokenRelayError(f"{who}: no token in its output")

    def ms(key: str) -> Optional[float]:
        x = v.get(key)
        if isinstance(x, bool) or not isinstance(x, (int, float)) or x < 0:
            return None
        return float(x) / 1000.0

    source = v.get("source")
    return Token(v["token"], ms("expiresOnTimestamp"), ms("refreshAfterTimestamp"), source if isinstance(source, str) else "")


def _backoff(failures: int, remaining: Optional[float]) -> float:
    wait = min(BACKOFF_CAP, BACKOFF_BASE * (2 ** min(max(failures - 1, 0), 16)))
    if remaining is not None:
        wait = min(wait, max(remaining / 2, 0.05))
    return wait


class TokenProvider:
    """A callable that returns a bearer token string, cached in process per provider name.

    Call it with no argument, or with the one dict/object an SDK passes (its `provider_name`
    picks the provider when none was fixed). Thread-safe. `aio` is the asyncio form.
    """

    def __init__(
        self, argv: Sequence[str], provider: Optional[str], by_name: bool, binary: Optional[str], call_timeout: float
    ) -> None:
        self._argv = list(argv)
        self._provider = provider
        self._by_name = by_name
        self._binary = binary
        self._call_timeout = call_timeout
        self._lock = threading.Lock()
        self._entries: Dict[Optional[str], _Entry] = {}
        self.aio = AsyncTokenProvider(self)

    def __repr__(self) -> str:
        return f"TokenProvider(argv={self._argv!r}, provider={self._provider!r})"

    # -- public API -------------------------------------------------------------------------

    def __call__(self, args: Any = None) -> str:
        return self.get_token(args).token

    def get_token(self, args: Any = None) -> Token:
        """The current token for the provider `args` names (see the class doc).

        Raises `TokenRelayError` with the helper's one-line cause when no valid token can be had.
        """
        key = self._key(args)
        token = self._fresh(key)
        if token is not None:
            return token
        token, fut, owner = self._claim(key)
        if token is not None:
            return token
        assert fut is not None
        if owner:
            self._fill(key, fut)
        return fut.result(timeout=self._call_timeout + 5)

    def invalidate(self, args: Any = None) -> None:
        """Forget the token of that provider (as after a 401): the next call runs the helper
        with `--invalidate`, which drops the shared on-disk token too."""
        key = self._key(args)
        with self._lock:
            e = self._entries.setdefault(key, _Entry())
            e.token = None
            e.next_run = 0.0
            e.invalidate = True
            e.generation += 1

    # -- internals ---------------------------------------------------------------------------

    def _key(self, args: Any) -> Optional[str]:
        if self._provider is not None or not self._by_name:
            return self._provider
        return _provider_name(args)

    def _fresh(self, key: Optional[str]) -> Optional[Token]:
        """The warm path, without the lock: the token when it is not due. Each attribute read is
        atomic; a token replaced between the two reads is still checked against its own expiry."""
        e = self._entries.get(key)
        if e is None:
            return None
        t = e.token
        now = time.time()
        if t is not None and now < e.next_run and (t.expires_on is None or now < t.expires_on):
            return t
        return None

    def _claim(self, key: Optional[str]) -> "tuple[Optional[Token], Optional[Future[Token]], bool]":
        """Under the lock: a token to return now, or the future to wait on (and whether this
        caller owns it, i.e. must run the helper). A due token with enough left is returned
        while a refresh runs in the background."""
        now = time.time()
        with self._lock:
            e = self._entries.setdefault(key, _Entry())
            t = e.token
            usable = t is not None and (t.expires_on is None or t.expires_on > now)
            if usable and t is not None and now < e.next_run:
                return t, None, False
            if usable and t is not None and self._enough_left(t, now):
                if e.inflight is None:
                    fut: "Future[Token]" = Future()
                    e.inflight = fut
                    threading.Thread(target=self._fill, args=(key, fut), name="tokenrelay-refresh", daemon=True).start()
                return t, None, False
            if e.inflight is not None:
                return None, e.inflight, False
            fut = Future()
            e.inflight = fut
            return None, fut, True

    @staticmethod
    def _enough_left(t: Token, now: float) -> bool:
        if t.expires_on is None:
            return False  # no known expiry: ask on every call, as the helper's string form means
        left = t.expires_on - now
        if t.refresh_after is None:
            return left > MIN_REMAINING
        # The helper's refresh window is min(5 min, lifetime / 3); half of it is lifetime / 6
        # for a short token.
        window = max(t.expires_on - t.refresh_after, 0.0)
        return left > min(MIN_REMAINING, window / 2)

    def _fill(self, key: Optional[str], fut: "Future[Token]") -> None:
        """Runs the helper once and settles `fut` (never raises)."""
        fut.set_running_or_notify_cancel()
        with self._lock:
            e = self._entries.setdefault(key, _Entry())
            invalidate, generation = e.invalidate, e.generation
        try:
            token = self._run(key, invalidate)
        except BaseException as exc:  # settle waiters whatever happened
            now = time.time()
            with self._lock:
                e = self._entries.setdefault(key, _Entry())
                e.inflight = None
                e.failures += 1
                t = e.token
                if t is not None and (t.expires_on is None or t.expires_on > now):
                    # Keep serving the still-valid token; try again after a backoff.
                    e.next_run = now + _backoff(e.failures, t.remaining(now))
                    fut.set_result(t)
                else:
                    e.token = None
                    fut.set_exception(exc if isinstance(exc, Exception) else TokenRelayError(str(exc)))
            return
        now = time.time()
        with self._lock:
            e = self._entries.setdefault(key, _Entry())
            e.inflight = None
            if e.generation != generation:
                # invalidate() was called while this run went on: its token may be the rejected
                # one, so it is not kept; the next call runs the helper with --invalidate.
                fut.set_result(token)
                return
            e.invalidate = False
            e.token = token
            if token.expires_on is None:
                e.next_run = 0.0  # no known expiry: ask again next time
                e.failures = 0
            elif token.refresh_after is not None and token.refresh_after > now:
                e.next_run = token.refresh_after
                e.failures = 0
            else:
                # Already due: the shared cache served a still-valid token because its source
                # failed. Do not ask again on every call.
                e.failures += 1
                e.next_run = now + _backoff(e.failures, token.remaining(now))
        fut.set_result(token)

    def _run(self, key: Optional[str], invalidate: bool) -> Token:
        if self._binary is None:
            self._binary = _find_binary()
        binary = self._binary
        argv = [binary, "token", "--output", "json", *self._argv]
        if key is not None:
            argv += ["--provider", key]
        if invalidate:
            argv.append("--invalidate")
        who = f"tokenrelay token{' for provider ' + key if key else ''}"
        try:
            p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=self._call_timeout, check=False)
        except subprocess.TimeoutExpired:
            raise TokenRelayError(f"{who}: no answer within {self._call_timeout:g} s") from None
        except OSError as e:
            raise TokenRelayError(f"{who}: cannot run {binary}: {e.strerror or e}") from None
        if p.returncode != 0:
            lines = p.stderr.decode("utf-8", "replace").strip().splitlines()
            cause = lines[-1][:500] if lines else f"exit status {p.returncode}"
            raise TokenRelayError(f"{who}: {cause}")
        token = _parse(p.stdout, who)
        if token.expires_on is not None and token.expires_on <= time.time():
            raise TokenRelayError(f"{who}: the token it gave is already expired")
        return token


class AsyncTokenProvider:
    """The asyncio form of a `TokenProvider` (same cache): `await provider(args)`.

    A warm call does no I/O; a refresh runs the helper on a worker thread, so the event loop
    is never blocked, and concurrent tasks (and threads) share one run.
    """

    def __init__(self, inner: TokenProvider) -> None:
        self._inner = inner

    def __repr__(self) -> str:
        return f"AsyncTokenProvider({self._inner!r})"

    async def __call__(self, args: Any = None) -> str:
        return (await self.get_token(args)).token

    async def get_token(self, args: Any = None) -> Token:
        """As `TokenProvider.get_token`, without blocking the event loop."""
        inner = self._inner
        key = inner._key(args)
        token = inner._fresh(key)
        if token is not None:
            return token
        token, fut, owner = inner._claim(key)
        if token is not None:
            return token
        assert fut is not None
        if owner:
            threading.Thread(target=inner._fill, args=(key, fut), name="tokenrelay-refresh", daemon=True).start()
        # shield: a cancelled caller must not cancel the run other callers wait for.
        return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(fut)), inner._call_timeout + 5)

    def invalidate(self, args: Any = None) -> None:
        """As `TokenProvider.invalidate`."""
        self._inner.invalidate(args)


def _duration(v: Union[None, str, int, float]) -> Optional[str]:
    if v is None:
        return None
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return f"{int(v * 1000)}ms"
    return str(v)


def bearer_token_provider(
    config: Union[None, str, "os.PathLike[str]"] = None,
    provider: Optional[str] = None,
    command: Optional[str] = None,
    *,
    file: Union[None, str, "os.PathLike[str]"] = None,
    env: Optional[str] = None,
    scope: Optional[str] = None,
    format: Optional[str] = None,
    timeout: Union[None, str, int, float] = None,
    default_ttl: Union[None, str, int, float] = None,
    cache_dir: Union[None, str, "os.PathLike[str]"] = None,
    no_cache: bool = False,
    binary: Union[None, str, "os.PathLike[str]"] = None,
    call_timeout: float = 60.0,
) -> TokenProvider:
    """A token provider over `tokenrelay token` with these source flags.

    `config` (a TOML file with `[[provider]]` tables) and `provider` (which one; without it,
    the name the SDK passes) or one source: `command` (shell command printing a token), `file`,
    `env`. `scope`, `format`, `timeout` / `default_ttl` (seconds or "30s"), `cache_dir`,
    `no_cache` are the helper's flags of the same names. `binary` overrides the packaged
    binary; `call_timeout` bounds one helper run (seconds).

    Raises `ValueError` when more than one source is given.
    """
    sources = [x for x in (config, command, file, env) if x is not None]
    if len(sources) > 1:
        raise ValueError("give only one of config, command, file, env")
    argv: List[str] = []
    for flag, value in (
        ("--config", config),
        ("--token-command", command),
        ("--token-file", file),
        ("--token-env", env),
        ("--scope", scope),
        ("--format", format),
        ("--timeout", _duration(timeout)),
        ("--default-ttl", _duration(default_ttl)),
        ("--cache-dir", cache_dir),
    ):
        if value is not None:
            argv += [flag, os.fspath(value)]
    if no_cache:
        argv.append("--no-cache")
    if call_timeout <= 0:
        raise ValueError("call_timeout must be positive")
    # A flag-defined source is one provider: the name the SDK passes selects nothing then.
    by_name = provider is None and command is None and file is None and env is None
    return TokenProvider(argv, provider, by_name, os.fspath(binary) if binary else None, call_timeout)


#: The same as `bearer_token_provider`, named for `openai.AzureOpenAI(azure_ad_token_provider=…)`.
azure_ad_token_provider = bearer_token_provider
