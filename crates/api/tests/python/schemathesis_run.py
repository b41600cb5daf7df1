"""Runs schemathesis against the real `apitrail serve` binary over every operation of its own
`/openapi.json`: once authenticated with an org key holding every scope, once with the
operator token, each with schemathesis's default checks (all of them). Any failure, error or
unreachable server fails the run (exit status 1). README ("What ./scripts/test runs") says
what it shows and what it leaves out.

The server and schemathesis run inside a private network namespace (only a loopback
interface): the test creates webhook destinations with generated URLs and triggers actions,
which the server's dispatcher then delivers, and no such delivery (nor a DNS lookup) may
leave the machine. Without a namespace the run refuses to start.

Usage: python schemathesis_run.py --apitrail PATH/TO/apitrail [--max-examples N] [--seed N]
(the interpreter is the virtualenv's that has schemathesis installed).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import secrets
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ISOLATED_MARK = "APITRAIL_SCHEMATHESIS_ISOLATED"
ORG_ID = "1"  # numeric, so that the actions dialect's `org_id` (^[0-9]+$) can name it


def isolate_or_exit() -> None:
    """Re-runs this script in a new network namespace, unless it already runs in one."""
    if os.environ.get(ISOLATED_MARK) == "1":
        return
    env = dict(os.environ, **{ISOLATED_MARK: "1"})
    unshare = shutil.which("unshare")
    if unshare is None:
        sys.exit("schemathesis run: `unshare` (util-linux) is needed to isolate the network")
    attempts = [[unshare, "--net"]] if os.geteuid() == 0 else []
    attempts.append([unshare, "--net", "--map-root-user"])
    for prefix in attempts:
        probe = subprocess.run([*prefix, "true"], capture_output=True)
        if probe.returncode == 0:
            done = subprocess.run([*prefix, sys.executable, *sys.argv], env=env)
            sys.exit(done.returncode)
    sys.exit(
        "schemathesis run: cannot make a private network namespace (run as root, or enable "
        "unprivileged user namespaces); refusing to run the server's dispatcher unisolated"
    )


def loopback_up() -> None:
    """Brings `lo` up in the fresh namespace and checks it is the only interface."""
    names = [name for _, name in socket.if_nameindex()]
    if names != ["lo"]:
        sys.exit(f"schemathesis run: expected only a loopback interface, found {names}")
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sh", b"lo", 0)
        flags = struct.unpack("16sh", fcntl.ioctl(s, siocgifflags, request))[1]
        fcntl.ioctl(s, siocsifflags, struct.pack("16sh", b"lo", flags | iff_up))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(base: str, method: str, path: str, token: str | None, body: object | None = None,
         headers: dict[str, str] | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        base + path,
        data=data,
        method=method,
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def wait_ready(base: str, server: subprocess.Popen, deadline_secs: float = 30.0) -> None:
    deadline = time.monotonic() + deadline_secs
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"apitrail serve exited with status {server.returncode}")
        try:
            with urllib.request.urlopen(base + "/readyz", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.05)
    raise RuntimeError("apitrail serve did not become ready within 30 s")


# Deletes that SPEC §11 makes soft: a deleted destination or definition, or a revoked key,
# stays readable by id (with `deleted_at` / `revoked_at` set) by design, which the
# `use_after_free` check reads as a resource still available after DELETE. The check stays
# on for every other operation.
SOFT_DELETED_READS = ["get_destination", "get_definition", "get_key", "admin_get_key"]

# The live tails, whose resume header only accepts ids of the org's own records.
TAIL_OPERATIONS = ["tail_logs", "tail_audit_log"]


def write_config(path: str) -> None:
    """The schemathesis config: the hooks (schemathesis_hooks.py), path `org_id`s naming the
    test org (so that those routes reach their checks instead of a 404), and the one check
    exception above."""
    lines = [
        'hooks = "schemathesis_hooks"',
        "",
        "[parameters]",
        f'"path.org_id" = "{ORG_ID}"',
        "",
        # A request target over 8 KiB is refused before any parameter is read (414, which
        # every operation documents): schema-violating cases may meet that limit first.
        "[checks.negative_data_rejection]",
        'expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "414", "415", '
        '"422", "428", "429", "5xx"]',
        "",
        "[[operations]]",
        f"include-operation-id = {json.dumps(SOFT_DELETED_READS)}",
        "checks.use_after_free.enabled = false",
        "",
        # A tail's Last-Event-ID must name a record of the org (a random UUID is refused,
        # 400, by design); the hooks drop it from valid cases, and this covers a header the
        # hooks cannot reach.
        # A tail never ends by itself: schemathesis reads an event stream until the request
        # timeout, so a short one keeps each case short (every tail sends its headers and
        # its first events at once; a second of listening shows them).
        "[[operations]]",
        f"include-operation-id = {json.dumps(TAIL_OPERATIONS)}",
        "checks.positive_data_acceptance.enabled = false",
        "request-timeout = 1",
    ]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def make_fixtures(base: str, key: str, key_id: str) -> dict[str, str]:
    """A credential, a destination (a closed loopback port) and an action definition whose
    schema accepts any input, in the test org; with the key's id, which the hooks keep from
    being revoked, as they keep these from being deleted or replaced."""
    headers = {"X-API-Key": key}
    credential = call(base, "POST", "/v1/credentials", None, {"label": "fixture"}, headers)
    destination = call(base, "POST", "/v1/destinations", None, {
        "label": "fixture", "config": {"url": "http://127.0.0.1:9/hook"}}, headers)
    definition = call(base, "POST", "/v1/action-definitions", None, {
        "variant": "st-fixture", "schema": True,
        "destinations": [{"destination_id": destination["id"], "is_default": True}]}, headers)
    return {"org": ORG_ID, "credential": credential["id"], "destination": destination["id"],
            "action": "st-fixture", "definition": definition["id"], "key": key_id}


def run_schemathesis(label: str, schema_url: str, header: str, args: argparse.Namespace,
                     work: str, fixtures: dict[str, str]) -> tuple[int, int]:
    """One schemathesis run; returns (exit status, test cases generated)."""
    command = [
        sys.executable, "-m", "schemathesis.cli",
        "--config-file", os.path.join(work, "schemathesis.toml"),
        "run", schema_url,
        "--header", header,
        "--seed", str(args.seed),
        "--max-examples", str(args.max_examples),
        "--workers", "1",
        # Deterministic: no example database carried between runs.
        "--generation-database", "none",
        # Credentials are the ones given above; generated ones would only stand beside them.
        "--generation-with-security-parameters", "false",
        # apitrail refuses NUL characters in every text value (400, README): no store keeps them.
        "--generation-allow-x00", "false",
        "--request-timeout", "10",
        "--no-color",
        # The key and the token die with this run; shown, the curl lines replay as printed.
        "--output-sanitize", "false",
        "--report", "junit",
        "--report-junit-path", os.path.join(work, f"{label}.xml"),
        *[arg for op in args.only for arg in ("--include-operation-id", op)],
    ]
    started = time.monotonic()
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.abspath(__file__)),
               APITRAIL_ST_FIXTURES=json.dumps(fixtures))
    done = subprocess.run(command, capture_output=True, text=True, cwd=work, env=env)
    output = done.stdout + done.stderr
    cases = _number(r"(\d+) generated", output)
    selected = _number(r"Selected: \d+/(\d+)", output)
    tested = _number(r"Tested: (\d+)", output)
    elapsed = time.monotonic() - started
    code = done.returncode
    if code == 0 and (tested is None or tested != selected):
        # Every operation of the document must have been exercised.
        print(f"schemathesis ({label}): tested {tested} of {selected} operations")
        code = 1
    if code != 0:
        print(output)
    print(f"schemathesis ({label}): {cases} test cases over {tested}/{selected} operations, "
          f"exit status {done.returncode}, {elapsed:.0f} s", flush=True)
    return code, cases or 0


def _number(pattern: str, text: str) -> int | None:
    """The last match of `pattern`'s group in `text`, as an integer."""
    found = re.findall(pattern, text)
    return int(found[-1]) if found else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--apitrail", required=True, help="the apitrail binary")
    parser.add_argument("--max-examples", type=int, default=25)
    parser.add_argument("--seed", type=int, default=20260401)
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (server log)")
    parser.add_argument("--only", action="append", default=[],
                        help="pass --include-operation-id OP to schemathesis (repeatable)")
    args = parser.parse_args()
    isolate_or_exit()
    loopback_up()

    work = tempfile.mkdtemp(prefix="apitrail-schemathesis-")
    token = "op_" + secrets.token_urlsafe(24)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = os.path.join(work, "serve.log")
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [args.apitrail, "serve", "--listen", f"127.0.0.1:{port}",
             "--data-dir", os.path.join(work, "data"),
             # Generated destinations point anywhere, loopback included; inside this
             # namespace nothing else is reachable.
             "--allow-private-destinations",
             "--log-format", "json"],
            env=dict(os.environ, APITRAIL_ADMIN_TOKEN=token, APITRAIL_LOG="warn"),
            stdout=log, stderr=subprocess.STDOUT,
        )
    status = 1
    try:
        wait_ready(base, server)
        call(base, "POST", "/admin/v1/orgs", token, {"id": ORG_ID, "name": "schemathesis"})
        created = call(base, "POST", f"/admin/v1/orgs/{ORG_ID}/api-keys", token, {
            "name": "schemathesis", "scopes": ["read", "write", "admin"],
            "principal_type": "user", "principal_id": "schemathesis",
        })
        key = created["secret"]
        fixtures = make_fixtures(base, key, created["id"])
        write_config(os.path.join(work, "schemathesis.toml"))
        schema = base + "/openapi.json"
        total = 0
        failed = []
        for label, header in [("org key", f"X-API-Key: {key}"),
                              ("operator token", f"Authorization: Bearer {token}")]:
            code, cases = run_schemathesis(label.replace(" ", "-"), schema, header, args, work,
                                           fixtures)
            total += cases
            if code != 0:
                failed.append(label)
        if server.poll() is not None:
            failed.append(f"the server (exited with status {server.returncode})")
        print(f"schemathesis: {total} test cases in all; "
              + ("no failures" if not failed else "FAILED: " + ", ".join(failed)), flush=True)
        status = 0 if not failed else 1
    except Exception as e:  # noqa: BLE001 - any setup failure fails the run, with the log
        print(f"schemathesis run: {e}", flush=True)
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
        if status != 0:
            with open(log_path, encoding="utf-8", errors="replace") as log:
                print("--- apitrail serve log (last 40 lines) ---")
                print("".join(log.readlines()[-40:]))
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
