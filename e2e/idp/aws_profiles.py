"""`kind = "aws"` with ~/.aws profiles against moto_server, checked against botocore itself.

Run by e2e/idp/aws-profiles.sh (which e2e/idp/run.sh calls) with the venv's Python (boto3 and
moto pinned there). Two parts:

1. Reference: one AWS_CONFIG_FILE / AWS_SHARED_CREDENTIALS_FILE with profiles for static keys,
   credential_process, role_arn + source_profile (AssumeRole) and web_identity_token_file
   (AssumeRoleWithWebIdentity). For each, boto3 and `tokenrelay token -o credential-process`
   obtain credentials, and sts:GetCallerIdentity signed with each (by botocore) answers the same
   Arn. moto does not check signatures here (web identity is unsigned, which moto's auth mode
   cannot take).
2. Through `tokenrelay serve` with moto checking every SigV4 signature and IAM policy
   (moto's /moto-api/reset-auth): GetCallerIdentity proxied with inject = "aws-sigv4" for an
   assumed role (AssumeRole signed by tokenrelay with the source profile's keys, verified by
   moto) and for a credential_process handing out 6-second credentials that alternate between
   the user's two access keys (rotation over several lifetimes, no client-visible failure);
   a wrong signature is refused by moto (the control); refusals through `tokenrelay check`.

Everything binds 127.0.0.1; every wait is bounded. Prints one `verified:` line per check.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import boto3
import botocore
from botocore.exceptions import ClientError

ACCOUNT = "123456789012"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/e2e-role"
ALLOW_ALL = json.dumps(
    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
)


def fail(msg):
    print(f"FAIL e2e/idp aws profiles: {msg}", file=sys.stderr)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def post(url, body, content_type="application/x-www-form-urlencoded", timeout=10):
    req = urllib.request.Request(url, data=body.encode(), method="POST", headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def moto_auth(sts, count):
    status, _ = post(f"{sts}/moto-api/reset-auth", count, "text/plain")
    check(status == 200, f"moto reset-auth answered {status}")


def arn_with(creds, sts):
    c = boto3.client(
        "sts",
        endpoint_url=sts,
        region_name="us-east-1",
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds.get("SessionToken"),
    )
    return c.get_caller_identity()["Arn"]


def write(path, text, mode=0o600):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sts", required=True)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--work", required=True)
    a = ap.parse_args()
    sts, work, binary = a.sts.rstrip("/"), a.work, os.path.abspath(a.bin)
    print(f"  boto3 {boto3.__version__}, botocore {botocore.__version__}")

    # --- setup in moto (auth off): a user with two access keys, a role it may assume
    admin = dict(endpoint_url=sts, region_name="us-east-1", aws_access_key_id="setup", aws_secret_access_key="setup")
    iam = boto3.client("iam", **admin)
    user = iam.create_user(UserName="e2e-profiles")["User"]
    iam.put_user_policy(UserName="e2e-profiles", PolicyName="all", PolicyDocument=ALLOW_ALL)
    k1 = iam.create_access_key(UserName="e2e-profiles")["AccessKey"]
    k2 = iam.create_access_key(UserName="e2e-profiles")["AccessKey"]
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"AWS": user["Arn"]}, "Action": "sts:AssumeRole"},
            {"Effect": "Allow", "Principal": {"Federated": "token.actions.githubusercontent.com"},
             "Action": "sts:AssumeRoleWithWebIdentity"},
        ],
    }
    iam.create_role(RoleName="e2e-role", AssumeRolePolicyDocument=json.dumps(trust))
    iam.put_role_policy(RoleName="e2e-role", PolicyName="all", PolicyDocument=ALLOW_ALL)

    # --- the shared files, used by boto3 and tokenrelay alike
    keys_file = os.path.join(work, "keys.json")
    write(keys_file, json.dumps([k1, k2], default=str))
    count_file = os.path.join(work, "process-count")
    emit = os.path.join(work, "emit-creds.py")
    # argv[1]: lifetime in seconds; alternates between the two keys at each run
    write(emit, f"""#!{sys.executable}
import json, sys
from datetime import datetime, timedelta, timezone
keys = json.load(open({keys_file!r}))
try:
    n = int(open({count_file!r}).read())
except Exception:
    n = 0
open({count_file!r}, "w").write(str(n + 1))
k = keys[n % 2]
exp = datetime.now(timezone.utc) + timedelta(seconds=int(sys.argv[1]))
print(json.dumps({{"Version": 1, "AccessKeyId": k["AccessKeyId"], "SecretAccessKey": k["SecretAccessKey"],
                  "Expiration": exp.strftime("%Y-%m-%dT%H:%M:%SZ")}}))
""", 0o700)
    fail_proc = os.path.join(work, "fail-creds.sh")
    write(fail_proc, "#!/bin/sh\necho 'token for AKIAIOSFODNN7EXAMPLE expired; run login' >&2\nexit 1\n", 0o700)
    wi_token = os.path.join(work, "web-identity-token")
    # moto accepts any JWT-shaped token; the claims only shape the session
    write(wi_token, "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJyZXBvOm8vcjpyZWY6cmVmcy9oZWFkcy9tYWluIiwiYXVkIjoic3RzLmFtYXpvbmF3cy5jb20ifQ.c2ln\n")
    config = os.path.join(work, "config")
    credentials = os.path.join(work, "credentials")
    write(config, f"""[default]
region = us-east-1

[profile static]
region = us-east-1

[profile proc]
region = us-east-1
credential_process = {emit} 3600

[profile role]
region = us-east-1
role_arn = {ROLE}
source_profile = static
role_session_name = ref-role

[profile chain]
region = us-east-1
role_arn = {ROLE}
source_profile = role
role_session_name = ref-chain

[profile wi]
region = us-east-1
web_identity_token_file = {wi_token}
role_arn = {ROLE}
role_session_name = ref-wi

[profile rot]
region = us-east-1
credential_process = {emit} 6

[profile fail]
region = us-east-1
credential_process = {fail_proc}
""")
    write(credentials, f"""[static]
aws_access_key_id = {k1["AccessKeyId"]}
aws_secret_access_key = {k1["SecretAccessKey"]}
""")
    env = dict(os.environ)
    for v in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ROLE_ARN",
              "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
              "AWS_REGION", "AWS_DEFAULT_REGION"]:
        env.pop(v, None)
    env.update({
        "AWS_CONFIG_FILE": config,
        "AWS_SHARED_CREDENTIALS_FILE": credentials,
        "AWS_ENDPOINT_URL_STS": sts,
        # IMDS must never be what answers: point it at a closed port
        "AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:9",
        "AWS_EC2_METADATA_DISABLED": "true",
        "TOKENRELAY_CACHE_DIR": os.path.join(work, "cache"),
    })
    os.environ.update({k: env[k] for k in ["AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_ENDPOINT_URL_STS",
                                           "AWS_EC2_METADATA_DISABLED"]})

    port_role, port_rot = free_port(), free_port()
    cfg = os.path.join(work, "tokenrelay.toml")

    def provider(name, profile, listen=None):
        lines = [f'[[provider]]\nname = "{name}"\nupstream = "{sts}"\ninject = "aws-sigv4"\n'
                 f'aws_service = "sts"\naws_region = "us-east-1"\n']
        if listen:
            lines.append(f'listen = "127.0.0.1:{listen}"\n')
        lines.append('[provider.source]\nkind = "aws"\ntimeout = "10s"\n')
        if profile:
            lines.append(f'profile = "{profile}"\n')
        return "".join(lines)

    def config_file(name, *providers):
        path = os.path.join(work, f"{name}.toml")
        write(path, f'listen = "127.0.0.1:{free_port()}"\n' + "".join(providers))
        return path

    cfg = config_file("reference", provider("ref-static", "static"), provider("ref-proc", "proc"),
                      provider("ref-role", "role"), provider("ref-chain", "chain"), provider("ref-wi", "wi"))
    cfg_serve = config_file("serve", provider("sts-role", "role", port_role), provider("sts-rot", "rot", port_rot))
    cfg_fail = config_file("fail", provider("refuse-fail", "fail"))
    cfg_missing = config_file("missing", provider("refuse-missing", "nobody"))

    def tokenrelay(*args, timeout=30):
        return subprocess.run([binary, *args], env=env, capture_output=True, text=True, timeout=timeout)

    # --- part 1: the reference check
    for profile, want_kind in [("static", ":user/e2e-profiles"), ("proc", ":user/e2e-profiles"),
                               ("role", ":assumed-role/e2e-role/ref-role"),
                               ("chain", ":assumed-role/e2e-role/ref-chain"), ("wi", ":assumed-role/e2e-role/ref-wi")]:
        boto_arn = boto3.Session(profile_name=profile).client("sts").get_caller_identity()["Arn"]
        r = tokenrelay("token", "--config", cfg, "--provider", f"ref-{profile}", "-o", "credential-process", "--no-cache")
        check(r.returncode == 0, f"tokenrelay token for profile {profile}: exit {r.returncode}: {r.stderr.strip()}")
        creds = json.loads(r.stdout)
        check(creds.get("Version") == 1, f"profile {profile}: Version {creds.get('Version')}")
        tr_arn = arn_with(creds, sts)
        check(boto_arn == tr_arn, f"profile {profile}: boto3 {boto_arn} != tokenrelay {tr_arn}")
        check(tr_arn.endswith(want_kind), f"profile {profile}: {tr_arn} is not *{want_kind}")
        print(f"verified: profile {profile}: boto3 and tokenrelay token both get credentials whose GetCallerIdentity is {tr_arn}")

    # the order: environment keys beat AWS_PROFILE, but not a profile named in code / the table
    # (boto3.Session(profile_name=...) is what the table's `profile` key mirrors)
    cfg_order = config_file("order", provider("order-env", None), provider("order-table", "role"))
    order_env = dict(env, AWS_ACCESS_KEY_ID=k2["AccessKeyId"], AWS_SECRET_ACCESS_KEY=k2["SecretAccessKey"], AWS_PROFILE="role")
    saved = dict(os.environ)
    os.environ.update(order_env)
    try:
        boto_env = boto3.Session().client("sts").get_caller_identity()["Arn"]
        boto_table = boto3.Session(profile_name="role").client("sts").get_caller_identity()["Arn"]
    finally:
        os.environ.clear()
        os.environ.update(saved)
    for name, boto_arn in [("order-env", boto_env), ("order-table", boto_table)]:
        r = subprocess.run([binary, "token", "--config", cfg_order, "--provider", name, "-o", "credential-process", "--no-cache"],
                           env=order_env, capture_output=True, text=True, timeout=30)
        check(r.returncode == 0, f"tokenrelay token {name}: {r.stderr.strip()}")
        tr_arn = arn_with(json.loads(r.stdout), sts)
        check(tr_arn == boto_arn, f"{name}: boto3 {boto_arn} != tokenrelay {tr_arn}")
    check(boto_env.endswith(":user/e2e-profiles") and ":assumed-role/" in boto_table, f"{boto_env} {boto_table}")
    print(f"verified: order as botocore: env keys + AWS_PROFILE=role -> {boto_env}; profile = \"role\" in the table "
          f"(boto3.Session(profile_name=\"role\")) with the same env keys -> {boto_table}")

    # --- part 2: moto checks every signature from here on
    moto_auth(sts, "0")
    try:
        bad = dict(k1, SecretAccessKey="not-the-secret")
        try:
            arn_with(bad, sts)
            fail("moto accepted a wrong signature: the check would prove nothing")
        except ClientError as e:
            check(e.response["Error"]["Code"] == "SignatureDoesNotMatch", f"control: {e}")
        print("verified: control: moto refuses a request signed with a wrong secret (SignatureDoesNotMatch)")

        r = tokenrelay("check", "--config", cfg_serve)
        check(r.returncode == 0, f"tokenrelay check (serve config): exit {r.returncode}: {r.stderr.strip()}")
        shown = " | ".join(l.strip() for l in r.stdout.strip().splitlines())
        print(f"verified: tokenrelay check, AssumeRole and credential_process with moto verifying: {shown}")

        for name, path, want in [("refuse-fail", cfg_fail, f"aws source (profile fail in {config}): credential_process: exited with status 1: token for [redacted] expired; run login"),
                           ("refuse-missing", cfg_missing, "aws source (profile nobody): invalid configuration: no such profile in")]:
            r = tokenrelay("check", "--config", path)
            err = (r.stdout + r.stderr).strip()
            check(r.returncode != 0, f"tokenrelay check {name} succeeded")
            check(want in err, f"tokenrelay check {name}: {err!r} lacks {want!r}")
            check("AKIAIOSFODNN7EXAMPLE" not in err, f"{name}: the key leaked")
            lines = [l for l in err.splitlines() if "aws source" in l]
            check(len(lines) == 1, f"{name}: not one line: {err!r}")
            print(f"verified: refusal via tokenrelay check (exit {r.returncode}): {lines[0]}")

        log = open(os.path.join(work, "serve.log"), "w")
        serve = subprocess.Popen([binary, "serve", "--config", cfg_serve], env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            body = "Action=GetCallerIdentity&Version=2011-06-15"
            deadline = time.time() + 20
            while True:
                try:
                    status, text = post(f"http://127.0.0.1:{port_role}/", body, timeout=5)
                    break
                except OSError:
                    check(time.time() < deadline, "tokenrelay serve did not come up")
                    time.sleep(0.2)
            check(status == 200, f"serve sts-role: HTTP {status}: {text[:300]}")
            check(f"arn:aws:sts::{ACCOUNT}:assumed-role/e2e-role/ref-role" in text, f"serve sts-role: {text[:300]}")
            print("verified: serve: GetCallerIdentity proxied with aws-sigv4 for profile role (AssumeRole + SigV4 both verified by moto) -> assumed-role/e2e-role/ref-role")

            before = int(open(count_file).read())
            ok, failures, keys_seen, started = 0, [], set(), time.time()
            while time.time() - started < 21:
                status, text = post(f"http://127.0.0.1:{port_rot}/", body, timeout=10)
                if status == 200 and f":user/e2e-profiles" in text:
                    ok += 1
                else:
                    failures.append(f"HTTP {status}: {text[:200]}")
                time.sleep(0.25)
            runs = int(open(count_file).read()) - before
            check(not failures, f"serve rotation: {len(failures)} client-visible failures, first: {failures[:1]}")
            check(runs >= 3, f"serve rotation: credential_process ran {runs} times in 21 s of 6 s credentials")
            print(f"verified: serve rotation: {ok} requests over 21 s of 6-second credential_process credentials "
                  f"(alternating access keys, each signature verified by moto), credential_process ran {runs} times, 0 failures")
        finally:
            serve.terminate()
            try:
                serve.wait(timeout=10)
            except subprocess.TimeoutExpired:
                serve.kill()
            log.close()
    finally:
        moto_auth(sts, "inf")
    print("e2e/idp aws profiles: all checks passed")


if __name__ == "__main__":
    main()
