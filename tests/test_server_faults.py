"""The REST API under faults, against a real ``jupyter server`` process: a kernel holding the store's write
lock must slow no request (writes get a quick 503), and a few thousand generated odd requests must never get
a 5xx, a non-JSON answer, or anything read from outside the server root.

The server runs under a small wrapper that logs, through ``sys.addaudithook``, the resolved path of every file
it opens and every SQLite database it connects to: no path inside the secret directory (which the planted
symlinks point at) may appear there, and no response may carry the secret's sentinel.
"""
from __future__ import annotations

import http.client
import json
import os
import random
import shutil
import statistics
import sys
import textwrap
import threading
import time
import urllib.parse
from pathlib import Path

import pytest
import torch

from arrakis_jupyter.store import RunRecord, Store
from browser import free_port, start_server, stop_server
from locks import hold_write_lock

SENTINEL = "ARRAKIS-SECRET-SENTINEL-93c1"
TOKEN = "arrakis-faults-test"

AUDITED_SERVER = textwrap.dedent("""
    import os, sys
    from urllib.parse import unquote

    fd = os.open(os.environ["ARRAKIS_AUDIT_LOG"], os.O_WRONLY | os.O_CREAT | os.O_APPEND)  # before the hook

    def hook(event, args):
        if event not in ("open", "sqlite3.connect", "os.listdir", "os.scandir"):
            return
        try:
            path = args[0] if args else None
            if path is None or isinstance(path, int):
                return
            path = os.fsdecode(os.fspath(path))
            if event == "sqlite3.connect" and path.startswith("file:"):
                path = unquote(path[5:].split("?", 1)[0])
            os.write(fd, f"{event}\\t{os.path.realpath(path)}\\n".encode("utf-8", "surrogateescape"))
        except Exception:
            os.write(fd, f"{event}\\t?{args!r}\\n".encode("utf-8", "surrogateescape"))

    sys.addaudithook(hook)
    from jupyter_server.serverapp import main
    sys.exit(main())
""")


class Server:
    """``jupyter server`` (with the arrakis extension) on ``root``, under the audit-hook wrapper."""

    def __init__(self, base: Path, root: Path) -> None:
        self.root, self.port, self.audit = root, free_port(), base / "audit.log"
        (base / "server.py").write_text(AUDITED_SERVER)
        cmd = [sys.executable, str(base / "server.py"), "--no-browser", f"--port={self.port}",
               "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={root}",
               "--ServerApp.port_retries=0"]  # the extension is enabled by the package's jupyter-config
        if os.geteuid() == 0:
            cmd.append("--allow-root")
        env = {k: v for k, v in os.environ.items() if k != "ARRAKIS_HOME"}
        env.update(ARRAKIS_AUDIT_LOG=str(self.audit), JUPYTER_CONFIG_DIR=str(base / "config"),
                   JUPYTER_RUNTIME_DIR=str(base / "runtime"), HF_HUB_OFFLINE="1")
        self.proc, self.log = start_server(cmd, base, env, base / "server.log",
                                           lambda: self.request("GET", "/arrakis/api/store?dir=")[0] == 200,
                                           "jupyter server")

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)

    def request(self, method: str, path: str, body: bytes | str | None = None,
                conn: http.client.HTTPConnection | None = None) -> tuple[int, dict, bytes]:
        """(status, headers, body) of one request (on ``conn`` if given, which is reset after errors)."""
        own = conn is None
        conn = conn or self.connection()
        headers = {"Authorization": f"token {TOKEN}"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        except (OSError, http.client.HTTPException):
            conn.close()
            raise
        finally:
            if own:
                conn.close()

    def stop(self) -> None:
        stop_server(self.proc, self.log)


def record_fixture(store: Store) -> bool:
    """Record the fixture's experiments where they are missing (or lost a version); True if it recorded any."""
    class Png:
        def _repr_png_(self):
            return b"\x89PNG fixture"

    names = set(store.experiments()["name"])
    if "ioi" in names and len(store.versions("ioi")) < 2:
        store.delete_experiment("ioi")
        names.discard("ioi")
    if "ioi" not in names:
        store.record(RunRecord(name="ioi", source="x = 1\nx", result={"t": torch.ones(2, 3)}, tags=["a"],
                               metrics=[("loss", 0, 2.0, 0.0)], stdout="hello\n", started=1000.0))
        store.record(RunRecord(name="ioi", source="x = 2\nx", result={"t": torch.zeros(2, 3), "png": Png(),
                                                                     "inf": float("inf")},
                               status="error", error="boom", started=2000.0))
        store.record(RunRecord(name="ioi", source="x = 2\nx", result={"r": 3, "t": torch.arange(3.0)}, started=3000.0))
    if "other exp" not in names:
        store.record(RunRecord(name="other exp", source="print(1)", result=[1e308, -1e308], started=4000.0))
    return not {"ioi", "other exp"} <= names


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A server root with a real store and symlinks planted to lead outside it, into a secret directory."""
    base = tmp_path_factory.mktemp("faults")
    root, secret = base / "root", base / "secret"
    root.mkdir()
    secret.mkdir()
    (secret / "passwd").write_text(f"{SENTINEL} root:x:0:0\n")
    s = Store(secret / "experiments")
    s.record(RunRecord(name=SENTINEL, source=f"# {SENTINEL}", result={"t": torch.full((3,), 7.0)},
                       stdout=SENTINEL, note=SENTINEL))
    s.close()
    shutil.copytree(secret / "experiments" / "artefacts", secret / "artefacts")
    store = Store(root / "nb" / "experiments")
    record_fixture(store)
    (root / "nb" / "notes.txt").write_text("a notebook directory\n")
    (root / "linkdir").symlink_to(secret, target_is_directory=True)
    (root / "passlink").symlink_to(secret / "passwd")
    (root / "leak").mkdir()
    (root / "leak" / "experiments").symlink_to(secret / "experiments", target_is_directory=True)
    (root / "leak2" / "experiments").mkdir(parents=True)
    (root / "leak2" / "experiments" / "arrakis.db").symlink_to(secret / "experiments" / "arrakis.db")
    (root / "leak3" / "experiments").mkdir(parents=True)  # a store inside the root whose artefacts lie outside
    shutil.copy(secret / "experiments" / "arrakis.db", root / "leak3" / "experiments" / "arrakis.db")
    (root / "leak3" / "experiments" / "artefacts").symlink_to(secret / "artefacts", target_is_directory=True)
    server = Server(base, root)
    w = {"base": base, "root": root, "secret": secret, "store": store, "server": server}
    w["digests"] = plant(w)
    yield w
    server.stop()


def plant(w: dict) -> dict[str, str]:
    """(Re)plant the artefact faults in the fixture store: the tensor of v1's run (which a diff of v1 loads)
    and the PNG of v2's failed run are symlinks to the secret, v2's tensor is missing."""
    store = w["store"]
    faults = {}
    for v, kind, fault in (("v1", "tensor", "symlinked"), ("v2", "png", "symlinked"), ("v2", "tensor", "missing")):
        digest = next(h for _, h, k in store.artefacts_of("ioi", v) if k == kind)
        path = store.artefact(digest)[0]
        path.unlink(missing_ok=True)
        if fault == "symlinked":
            path.symlink_to(w["secret"] / "passwd")
        faults[digest] = fault
    others = [h for v in ("v1", "v2") for _, h, k in store.artefacts_of("ioi", v) if h not in faults]
    return {**faults, **{h: "real" for h in others}}


# ---- a kernel holding the write lock ---------------------------------------------------------------------------
READS = {"status": "/api/status", "contents": "/api/contents/nb?content=1",
         "experiments": "/arrakis/api/experiments?dir=nb", "versions": "/arrakis/api/experiments/ioi/versions?dir=nb",
         "version": "/arrakis/api/experiments/ioi/versions/v2?dir=nb",
         "runs": "/arrakis/api/experiments/ioi/runs?dir=nb&order=desc", "run": "/arrakis/api/runs/1?dir=nb"}


def test_a_held_write_lock_slows_no_request(world):
    server = world["server"]
    conn = server.connection()
    for path in READS.values():  # warm up: stores opened, caches filled
        assert server.request("GET", path, conn=conn)[0] == 200
    locker = hold_write_lock(world["root"] / "nb" / "experiments" / "arrakis.db", 20)
    locked_at = time.monotonic()
    patches: list[tuple[int, str | None, float]] = []

    def patch_while_locked() -> None:
        patch_conn = server.connection()
        while time.monotonic() - locked_at < 15:
            t = time.perf_counter()
            status, headers, _ = server.request("PATCH", "/arrakis/api/runs/1?dir=nb", '{"note": "locked"}',
                                                conn=patch_conn)
            patches.append((status, headers.get("Retry-After"), time.perf_counter() - t))

    writer = threading.Thread(target=patch_while_locked)
    writer.start()
    times: dict[str, list[float]] = {k: [] for k in READS}
    try:
        while time.monotonic() - locked_at < 16:
            for name, path in READS.items():
                t = time.perf_counter()
                status, _, _ = server.request("GET", path, conn=conn)
                times[name].append(time.perf_counter() - t)
                assert status == 200, (name, status)
            time.sleep(0.01)
    finally:
        writer.join()
        assert locker.wait(timeout=30) == 0
    status, _, body = server.request("PATCH", "/arrakis/api/runs/1?dir=nb", '{"note": "after the lock"}')
    assert status == 200 and json.loads(body)["note"] == "after the lock"

    every = sorted(t for ts in times.values() for t in ts)
    p99 = every[int(0.99 * (len(every) - 1))]
    summary = {name: f"median {statistics.median(ts) * 1e3:.1f} ms, max {max(ts) * 1e3:.1f} ms, n={len(ts)}"
               for name, ts in times.items()}
    print(f"\nwhile a kernel held the write lock: {json.dumps(summary, indent=1)}\nall reads: p99 "
          f"{p99 * 1e3:.1f} ms, max {every[-1] * 1e3:.1f} ms; PATCH: {len(patches)} answers, "
          f"{[(s, r, round(t, 2)) for s, r, t in patches]}")
    assert len(patches) >= 3 and all(s == 503 and r and int(r) >= 1 and 1.5 < t < 3.5 for s, r, t in patches), patches
    assert all(len(ts) >= 20 for ts in times.values())
    for name, ts in times.items():
        assert statistics.median(ts) < 0.1, (name, summary[name])
    assert p99 < 0.1 and every[-1] < 0.5, summary


# ---- fuzz ----------------------------------------------------------------------------------------------------
class Raw(str):
    """A path segment or query value sent exactly as written (already percent-encoded)."""


def enc(value: str) -> str:
    if isinstance(value, Raw):
        return str(value)
    return urllib.parse.quote(value.encode("utf-8", "surrogatepass"), safe="")


NAMES = ["ioi", "other exp", "nope", "", ".", "..", Raw("%2e%2e"), Raw("a%2Fb"), "a\\b", "\t", Raw("%00"),
         Raw("%ff%fe"), Raw("%ed%a0%80"), "\u202eevil", "x" * 5000, "🙂", "~", "/etc/passwd",
         Raw("..%2F..%2Fsecret"), "١٢", " ioi ", "IOI", SENTINEL[:8]]
RUN_IDS = ["1", "2", "3", "4", "0", "-1", str(2**63), str(2**63 - 1), "9" * 50, "9" * 5000, "١٢", "1.5", "1e3",
           " 1", "0x10", Raw("%31"), Raw("%ff"), "99999", "²"]
DIRS = ["", "nb", "nb/", "./nb", "nb/..", "../secret", "..", Raw("%2e%2e"), Raw("%2e%2e%2fsecret"), "/etc",
        "\\..\\secret", "linkdir", "linkdir/experiments", "leak", "leak2", "leak3", "passlink", "nb/notes.txt", "~",
        "~/", "nb\\..\\..", "C:\\", "a" * 300, "nb/" + "x" * 256, "é" * 200, "/".join(["d" * 200] * 30),
        "\u202enb", Raw("nb%00"), Raw("%ff"), Raw("%ed%a0%80"), "nb\n", "nb/./../nb", "//", "nb//", None]
REFS = ["v1", "v2", "v3", "v0", "v-1", "v" + "9" * 40, "V1", "abcd", "0000", "", "..", "x" * 3000, Raw("%ff")]
NUMBERS = ["0", "1", "50", "500", "501", "-1", "9" * 30, "1e3", "abc", "", Raw("%ff"), "١"]
EXTRA = {"offset": NUMBERS, "limit": NUMBERS, "order": ["asc", "desc", "up", "", "DESC"],
         "q": ["io", "", "%", SENTINEL[:6], "\u202e"], "status": ["ok", "error", "weird", ""],
         "tag": ["a", "", "a/b", "\t"], "since": ["1970-01-01", "not a time", "9" * 400, "2024-13-45"],
         "until": ["2100-01-01", "-1", Raw("%ff")], "hash": ["", "abcd", "v1", "zz"], "a": REFS, "b": REFS}


def bodies(rng: random.Random) -> bytes | str | None:
    depth = rng.choice([10, 900, 5000, 100_000])
    return rng.choice([
        None, '{"note": "fuzz"}', '{"add_tags": ["f"], "remove_tags": ["f"]}', "{not json", "[" * depth + "]" * depth,
        '{"note": ' + '{"a": ' * depth + "1" + "}" * depth + "}", '{"note": "' + "x" * rng.choice([10, 300_000]) + '"}',
        "x" * 1_200_000, '{"note": 3}', '{"add_tags": "x"}', '{"add_tags": ["a/b"]}', '{"colour": "red"}',
        b'{"note": "\xff\xfe"}', "null", "0", '"str"', "[]", "{}", '{"note": "\\ud800"}', '{"note": NaN}',
        '{"add_tags": [' + ",".join(['"t"'] * 1000) + "]}", b"\x00" * 100,
    ])


def fuzz_request(rng: random.Random, digests: list[str]) -> tuple[str, str, bytes | str | None, str | None]:
    """(method, path with query, body, the artefact digest asked for if any)."""
    def pick(options: list, good: int = 0):  # half the time one of the first ``good`` options (real things)
        return rng.choice(options[:good] if good and rng.random() < 0.5 else options)

    name, ref = enc(pick(NAMES, 2)), enc(pick(REFS, 2))
    kind = pick(["store", "experiments", "versions", "version", "runs", "diff", "run", "run", "artefact",
                 "artefact", "junk"])
    digest = None
    if kind == "artefact":
        digest = pick(digests + ["0" * 64, "../../etc/passwd", "A" * 64, "abc", Raw("%2e%2e%2f" * 3)])
    path = {"store": "store", "experiments": "experiments", "versions": f"experiments/{name}/versions",
            "version": f"experiments/{name}/versions/{ref}", "runs": f"experiments/{name}/runs",
            "diff": f"experiments/{name}/diff", "run": f"runs/{enc(pick(RUN_IDS, 4))}",
            "artefact": f"artefacts/{enc(digest) if digest is not None else ''}",
            "junk": pick(["", "x", "runs", "runs/", "experiments/ioi", Raw("%2e%2e/%2e%2e/api/status"), "a/b/c/d"])}[kind]
    params = [f"a={enc(pick(REFS, 2))}", f"b={enc(pick(REFS, 2))}"] if kind == "diff" else []
    d = pick(DIRS, 2)
    if d is not None:
        params.append(f"dir={enc(d)}")
    for key in rng.sample(sorted(EXTRA), rng.choice([0, 0, 1, 2, 3])):
        params.append(f"{key}={enc(pick(EXTRA[key]))}")
    if rng.random() < 0.05:
        params.append(f"dir={enc(pick([x for x in DIRS if x is not None]))}")  # twice
    method = rng.choices(["GET", "PATCH", "DELETE", "POST", "PUT"], weights=[60, 16, 8, 8, 8])[0]
    body = bodies(rng) if method in ("PATCH", "POST", "PUT") else None
    return method, f"/arrakis/api/{path}?{'&'.join(params)}", body, digest if isinstance(digest, str) else None


def test_fuzzed_requests_never_fail_and_never_read_outside_the_root(world):
    server, rng = world["server"], random.Random(20240611)
    n, started = 5000, time.monotonic()
    conn = server.connection()
    statuses: dict[int, int] = {}
    real = {h for h, what in world["digests"].items() if what == "real"}
    for i in range(n):
        if i % 250 == 0:  # deletions shrink the fixture: record it again (and plant the faults again)
            if record_fixture(world["store"]):
                world["digests"] = plant(world)
        method, path, body, digest = fuzz_request(rng, sorted(world["digests"]))
        try:
            status, headers, data = server.request(method, path, body, conn=conn)
        except (OSError, http.client.HTTPException) as e:
            pytest.fail(f"{method} {path[:300]}: the connection failed ({e!r}); server log: "
                        f"{(world['base'] / 'server.log').read_text()[-2000:]}")
        statuses[status] = statuses.get(status, 0) + 1
        where = f"{method} {path[:300]} body {str(body)[:80]!r} -> {status} {data[:300]!r}"
        assert status < 500, where
        assert SENTINEL.encode() not in data, where
        if status == 200 and digest in real and method == "GET":
            continue  # the artefact's bytes
        assert headers.get("Content-Type", "").startswith("application/json"), where
        payload = json.loads(data)
        assert status == 200 or set(payload) == {"error"}, where
    elapsed = time.monotonic() - started
    print(f"\n{n} fuzzed requests in {elapsed:.1f} s: {dict(sorted(statuses.items()))}")
    assert statuses.get(200, 0) > 300 and statuses.get(403, 0) > 100  # the fuzz reached the stores and the traps

    # nothing inside the secret directory was opened or connected to by the server; the secret is intact
    secret = os.path.realpath(world["secret"]) + os.sep
    log = world["server"].audit.read_text(errors="replace").splitlines()
    assert any(line.startswith("sqlite3.connect\t") for line in log)
    assert any(os.path.realpath(world["root"] / "nb" / "experiments" / "artefacts") in line for line in log)  # artefacts were read
    opened = [line for line in log if line.split("\t", 1)[-1].startswith(secret) or line.split("\t", 1)[-1].startswith("?")]
    assert not opened, opened[:20]
    assert len(list((world["secret"] / "artefacts").rglob("*.safetensors"))) == 1
    assert SENTINEL in Store(world["secret"] / "experiments", read_only=True).run(1).note
