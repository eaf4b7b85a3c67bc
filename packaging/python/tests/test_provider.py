"""Unit tests of the Python provider against a stand-in `tokenrelay` (a script that answers
`token --output json` as the real helper does, from a plan file, and logs its argv).

Run: python3 -m unittest discover -s packaging/python/tests   (no dependencies)
"""
import asyncio
import json
import os
import sys
import tempfile
import textwrap
import threading
import time
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from tokenrelay import TokenRelayError, bearer_token_provider  # noqa: E402
from tokenrelay import _provider  # noqa: E402

FAKE = textwrap.dedent(
    """\
    #!{python}
    import json, os, sys, time
    d = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(d, "log"), "a") as f:
        f.write(json.dumps(sys.argv[1:]) + "\\n")
    plan = json.load(open(os.path.join(d, "plan")))
    time.sleep(plan.get("sleep", 0))
    if plan.get("fail"):
        sys.stderr.write("tokenrelay: command source: exited 1\\n")
        sys.exit(1)
    if "raw" in plan:
        sys.stdout.write(plan["raw"])
        sys.exit(0)
    now = time.time() * 1000
    n = sum(1 for _ in open(os.path.join(d, "log")))
    out = {{"token": "tok-%d" % n, "source": "command"}}
    if plan.get("lifetime") is not None:
        out["expiresOnTimestamp"] = int(now + plan["lifetime"] * 1000)
        out["refreshAfterTimestamp"] = int(now + plan["refresh"] * 1000)
    print(json.dumps(out))
    """
)


class Fake:
    def __init__(self) -> None:
        self.dir = tempfile.TemporaryDirectory()
        self.path = Path(self.dir.name) / "tokenrelay"
        self.path.write_text(FAKE.format(python=sys.executable))
        self.path.chmod(0o755)
        self.plan(lifetime=60, refresh=40)

    def plan(self, **kw) -> None:
        (Path(self.dir.name) / "plan").write_text(json.dumps(kw))

    def runs(self) -> list:
        log = Path(self.dir.name) / "log"
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


class ProviderTests(unittest.TestCase):
    def setUp(self) -> None:
        self.fake = Fake()

    def tearDown(self) -> None:
        self.fake.dir.cleanup()

    def provider(self, **kw):
        kw.setdefault("command", "idp")
        return bearer_token_provider(binary=self.fake.path, **kw)

    def test_warm_calls_run_the_helper_once(self) -> None:
        p = self.provider()
        self.assertEqual({p() for _ in range(100)}, {"tok-1"})
        self.assertEqual(len(self.fake.runs()), 1)
        argv = self.fake.runs()[0]
        self.assertEqual(argv[:3], ["token", "--output", "json"])
        self.assertIn("--token-command", argv)
        t = p.get_token()
        self.assertNotIn("tok-1", repr(t))
        self.assertGreater(t.expires_on, t.refresh_after)

    def test_due_token_is_served_while_one_background_refresh_runs(self) -> None:
        self.fake.plan(lifetime=30, refresh=0.3)
        p = self.provider()
        self.assertEqual(p(), "tok-1")
        time.sleep(0.4)
        self.fake.plan(lifetime=30, refresh=20, sleep=0.3)
        self.assertEqual([p() for _ in range(20)], ["tok-1"] * 20)  # none waited
        deadline = time.time() + 5
        while p() == "tok-1" and time.time() < deadline:
            time.sleep(0.05)
        self.assertEqual(p(), "tok-2")
        self.assertEqual(len(self.fake.runs()), 2)

    def test_failure_keeps_the_valid_token_and_backs_off(self) -> None:
        self.fake.plan(lifetime=30, refresh=0.2)
        p = self.provider()
        p()
        time.sleep(0.3)
        self.fake.plan(fail=True)
        deadline = time.time() + 10
        while len(self.fake.runs()) < 2 and time.time() < deadline:
            self.assertEqual(p(), "tok-1")
            time.sleep(0.01)
        time.sleep(0.1)
        for _ in range(30):
            self.assertEqual(p(), "tok-1")
            time.sleep(0.01)
        # One failed run, then none before the 1 s backoff (3 on a slow machine, not one per call).
        self.assertLessEqual(len(self.fake.runs()), 3)

    def test_failure_without_a_token_names_the_cause(self) -> None:
        self.fake.plan(fail=True)
        p = self.provider()
        with self.assertRaises(TokenRelayError) as cm:
            p()
        self.assertEqual(str(cm.exception), "tokenrelay token: tokenrelay: command source: exited 1")

    def test_bad_output_is_refused(self) -> None:
        for raw, cause in (("not json", "output is not JSON"), ('{"token": ""}', "no token in its output"), ("[1]", "no token in its output")):
            self.fake.plan(raw=raw)
            with self.assertRaises(TokenRelayError) as cm:
                self.provider()()
            self.assertIn(cause, str(cm.exception))

    def test_expired_answer_is_refused(self) -> None:
        self.fake.plan(lifetime=-1, refresh=-2)
        with self.assertRaises(TokenRelayError) as cm:
            self.provider()()
        self.assertIn("already expired", str(cm.exception))

    def test_token_without_expiry_is_asked_for_every_time(self) -> None:
        self.fake.plan(lifetime=None)
        p = self.provider()
        self.assertEqual([p(), p(), p()], ["tok-1", "tok-2", "tok-3"])

    def test_invalidate_reruns_with_invalidate(self) -> None:
        p = self.provider()
        p()
        p.invalidate()
        self.assertEqual(p(), "tok-2")
        self.assertIn("--invalidate", self.fake.runs()[1])
        self.assertEqual(p(), "tok-2")  # from the provider again: no third run
        self.assertEqual(len(self.fake.runs()), 2)

    def test_invalidate_during_a_run_drops_its_token(self) -> None:
        self.fake.plan(lifetime=60, refresh=40, sleep=0.4)
        p = self.provider()
        t = threading.Thread(target=p)
        t.start()
        time.sleep(0.2)
        p.invalidate()  # the 401 came while tok-1 was being fetched: it may be the bad one
        t.join(10)
        self.assertEqual(p(), "tok-2")
        self.assertIn("--invalidate", self.fake.runs()[1])

    def test_sdk_provider_name_selects_the_config_table(self) -> None:
        p = bearer_token_provider(config="/etc/t.toml", binary=self.fake.path)
        self.assertEqual(p({"provider_name": "alpha", "session_id": "s"}), "tok-1")
        self.assertEqual(p({"providerName": "beta"}), "tok-2")
        self.assertEqual(p({"provider_name": "alpha"}), "tok-1")
        runs = self.fake.runs()
        self.assertEqual(runs[0][-2:], ["--provider", "alpha"])
        self.assertEqual(runs[1][-2:], ["--provider", "beta"])

    def test_flag_source_ignores_sdk_names(self) -> None:
        p = self.provider()
        p({"provider_name": "alpha"})
        p({"provider_name": "beta"})
        self.assertEqual(len(self.fake.runs()), 1)
        self.assertNotIn("--provider", self.fake.runs()[0])

    def test_threads_share_one_run(self) -> None:
        self.fake.plan(lifetime=60, refresh=40, sleep=0.3)
        p = self.provider()
        got = []
        barrier = threading.Barrier(12)

        def work() -> None:
            barrier.wait()
            got.append(p())

        ts = [threading.Thread(target=work) for _ in range(12)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(10)
        self.assertEqual(got, ["tok-1"] * 12)
        self.assertEqual(len(self.fake.runs()), 1)

    def test_asyncio_shares_one_run_and_never_blocks(self) -> None:
        self.fake.plan(lifetime=60, refresh=40, sleep=0.3)
        aio = self.provider().aio

        async def main():
            ticks = 0
            done = False

            async def tick():
                nonlocal ticks
                while not done:
                    await asyncio.sleep(0.01)
                    ticks += 1

            ticker = asyncio.create_task(tick())
            got = await asyncio.gather(*(aio() for _ in range(12)))
            done = True
            await ticker
            return got, ticks

        got, ticks = asyncio.run(main())
        self.assertEqual(got, ["tok-1"] * 12)
        self.assertEqual(len(self.fake.runs()), 1)
        self.assertGreaterEqual(ticks, 10)

    def test_cancelled_task_does_not_cancel_the_shared_run(self) -> None:
        self.fake.plan(lifetime=60, refresh=40, sleep=0.3)
        aio = self.provider().aio

        async def main():
            first = asyncio.create_task(aio())
            await asyncio.sleep(0.05)
            second = asyncio.create_task(aio())
            await asyncio.sleep(0.05)
            first.cancel()
            return await second

        self.assertEqual(asyncio.run(main()), "tok-1")
        self.assertEqual(len(self.fake.runs()), 1)

    def test_options_become_flags(self) -> None:
        p = bearer_token_provider(
            command="c", scope="s", format="jwt", timeout=1.5, default_ttl="15m",
            cache_dir="/tmp/x", no_cache=True, binary=self.fake.path,
        )
        p()
        argv = self.fake.runs()[0]
        for pair in (["--scope", "s"], ["--format", "jwt"], ["--timeout", "1500ms"], ["--default-ttl", "15m"], ["--cache-dir", "/tmp/x"]):
            i = argv.index(pair[0])
            self.assertEqual(argv[i : i + 2], pair)
        self.assertIn("--no-cache", argv)
        with self.assertRaises(ValueError):
            bearer_token_provider(config="a", command="b")

    def test_missing_binary_says_how_to_fix(self) -> None:
        p = bearer_token_provider(command="c", binary=Path(self.fake.dir.name) / "nope")
        with self.assertRaises(TokenRelayError) as cm:
            p()
        self.assertIn("cannot run", str(cm.exception))

    def test_finds_no_binary_on_path(self) -> None:
        # Not installed as a distribution here: the lookup must not fall back to PATH.
        old = os.environ.get("PATH", "")
        os.environ["PATH"] = self.fake.dir.name + os.pathsep + old
        try:
            try:
                found = _provider._find_binary()
            except TokenRelayError:
                found = None
            self.assertNotEqual(found, str(self.fake.path.resolve()))
        finally:
            os.environ["PATH"] = old


if __name__ == "__main__":
    unittest.main()
