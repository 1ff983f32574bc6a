"""The server extension's REST API (jupyter_server's pytest plugin: a real server in the test process)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from tornado.httpclient import HTTPClientError

from arrakis_jupyter.store import RunRecord, Store
from locks import hold_write_lock

@pytest.fixture(autouse=True)
def store_beside_notebooks(monkeypatch):
    monkeypatch.delenv("ARRAKIS_HOME", raising=False)  # stores live in <dir>/experiments


@pytest.fixture
def jp_server_config():
    return {"ServerApp": {"jpserver_extensions": {"arrakis_jupyter": True}}}


@pytest.fixture
def store(jp_root_dir):
    """A store beside notebooks in <root>/nb with two experiments."""
    s = Store(jp_root_dir / "nb" / "experiments")
    from bokeh.plotting import figure

    fig = figure(title="f")
    fig.line([0, 1], [0, 1])

    class Png:
        def _repr_png_(self):
            return b"\x89PNG tiny"

    s.record(RunRecord(name="ioi", source="x = 1\nx", result={"t": torch.ones(2, 3), "v": 1.5}, tags=["a"],
                       metrics=[("loss", 0, 2.0, 0.0)], stdout="hello\n", started=1000.0))
    s.record(RunRecord(name="ioi", source="x = 2\nx", result={"t": torch.zeros(2, 3), "v": 2.5, "png": Png()},
                       figures=[fig], status="error", error="Traceback: boom", started=2000.0))
    s.record(RunRecord(name="ioi", source="x = 2\nx", result=3, started=3000.0))
    s.record(RunRecord(name="other exp", source="print(1)", result=None, started=4000.0))
    return s


async def get(jp_fetch, *parts, **params):
    response = await jp_fetch("arrakis", "api", *parts, params=params)
    assert response.code == 200 and response.headers["Content-Type"].startswith("application/json")
    return json.loads(response.body)


async def error(jp_fetch, *parts, method="GET", body=None, headers=None, **params):
    with pytest.raises(HTTPClientError) as info:
        await jp_fetch("arrakis", "api", *parts, params=params, method=method, body=body, headers=headers,
                       allow_nonstandard_methods=True)
    response = info.value.response
    payload = json.loads(response.body)
    assert set(payload) == {"error"} and "Traceback" not in payload["error"]
    return response.code, payload["error"]


async def test_experiments_versions_runs_and_a_version(jp_fetch, store):
    exps = await get(jp_fetch, "experiments", dir="nb")
    assert exps["total"] == 2 and [e["name"] for e in exps["items"]] == ["ioi", "other exp"]
    assert exps["items"][0]["versions"] == 2 and exps["items"][0]["runs"] == 3
    assert exps["items"][0]["last_run"].startswith("1970-01-01T00:50:00")
    assert (await get(jp_fetch, "experiments", dir="nb", q="OTH"))["total"] == 1
    page = await get(jp_fetch, "experiments", dir="nb", offset=1, limit=1)
    assert [e["name"] for e in page["items"]] == ["other exp"] and page["total"] == 2

    versions = await get(jp_fetch, "experiments", "ioi", "versions", dir="nb")
    assert [v["v"] for v in versions["items"]] == [1, 2] and versions["items"][0]["tags"] == ["a"]
    assert versions["items"][1]["runs"] == 2 and versions["items"][1]["last_status"] == "ok"
    v1 = await get(jp_fetch, "experiments", "ioi", "versions", "v1", dir="nb")
    assert v1["source"] == "x = 1\nx" and v1["hash"] == versions["items"][0]["hash"]
    assert v1["metrics"] == [{"run_id": 1, "name": "loss", "step": 0, "value": 2.0}]
    assert [r["run_id"] for r in v1["runs"]["items"]] == [1] and v1["run_count"] == v1["runs"]["total"] == 1
    assert [(a["run_id"], a["kind"]) for a in v1["artefacts"]] == [(1, "tensor")]
    assert v1["artefacts"][0]["url"].endswith(f"arrakis/api/artefacts/{v1['artefacts'][0]['hash']}?dir=nb")
    by_prefix = await get(jp_fetch, "experiments", "ioi", "versions", v1["hash"][:6], dir="nb")
    assert by_prefix["v"] == 1
    spaced = await get(jp_fetch, "experiments", "other exp", "versions", dir="nb")
    assert spaced["total"] == 1

    runs = await get(jp_fetch, "experiments", "ioi", "runs", dir="nb")
    assert [r["run_id"] for r in runs["items"]] == [1, 2, 3]
    assert [r["run_id"] for r in (await get(jp_fetch, "experiments", "ioi", "runs", dir="nb", status="error"))["items"]] == [2]
    assert [r["run_id"] for r in (await get(jp_fetch, "experiments", "ioi", "runs", dir="nb", tag="a"))["items"]] == [1]
    window = await get(jp_fetch, "experiments", "ioi", "runs", dir="nb", since="1970-01-01T00:30:00Z",
                       until="1970-01-01T00:40:00Z")
    assert [r["run_id"] for r in window["items"]] == [2]


async def test_a_run_its_artefacts_and_a_diff(jp_fetch, store, jp_base_url):
    run = await get(jp_fetch, "runs", "2", dir="nb")
    assert run["status"] == "error" and run["error"] == "Traceback: boom" and run["name"] == "ioi"
    t = run["result"]["t"]["__arrakis__"]
    assert t["type"] == "tensor" and t["shape"] == [2, 3] and t["dtype"] == "float32"
    kinds = {a["kind"]: a for a in run["artefacts"]}
    assert set(kinds) == {"tensor", "png", "html"} and kinds["png"]["url"].endswith("?dir=nb")
    png = await jp_fetch("arrakis", "api", "artefacts", kinds["png"]["hash"], params={"dir": "nb"})
    assert png.headers["Content-Type"] == "image/png" and png.body == b"\x89PNG tiny"
    html = await jp_fetch("arrakis", "api", "artefacts", run["figures"][0]["__arrakis__"]["artefact"],
                          params={"dir": "nb"})
    assert html.headers["Content-Type"].startswith("text/html") and b"Bokeh" in html.body
    tensor = await jp_fetch("arrakis", "api", "artefacts", t["artefact"], params={"dir": "nb"})
    assert "attachment" in tensor.headers["Content-Disposition"]
    from safetensors.torch import load

    assert torch.equal(load(tensor.body)["value"], torch.zeros(2, 3))

    d = await get(jp_fetch, "experiments", "ioi", "diff", dir="nb", a="v1", b="v2")
    assert "-x = 1\n+x = 2\n" in d["unified"] and d["a"]["source"] == "x = 1\nx" and d["b"]["v"] == 2
    assert {r["path"]: r["equal"] for r in d["results"]} == {"result": False}
    assert d["metrics"] == [{"metric": "loss", "a": 2.0, "b": None, "delta": None}]


async def test_edits_and_deletes(jp_fetch, store):
    response = await jp_fetch("arrakis", "api", "runs", "1", params={"dir": "nb"}, method="PATCH",
                              body=json.dumps({"note": "checked", "add_tags": ["good"], "remove_tags": ["a"]}))
    assert json.loads(response.body)["tags"] == ["good"] and store.run(1).note == "checked"
    response = await jp_fetch("arrakis", "api", "experiments", "ioi", "versions", "v1", params={"dir": "nb"},
                              method="DELETE")
    assert json.loads(response.body) == {"deleted_runs": 1}
    assert len(store.versions("ioi")) == 1


async def test_no_store_yet_is_empty_not_created(jp_fetch, jp_root_dir):
    assert (await get(jp_fetch, "experiments", dir="empty"))["items"] == []
    status = await get(jp_fetch, "store", dir="")
    assert status["exists"] is False and status["path"] == str((jp_root_dir / "experiments").resolve())
    code, message = await error(jp_fetch, "experiments", "x", "versions", dir="")
    assert code == 404 and "no experiment store in the server root yet" in message
    assert not (jp_root_dir / "experiments").exists()


@pytest.mark.parametrize("parts, params, status, message", [
    (("experiments",), {"dir": "../.."}, 403, "without '..'"),
    (("experiments",), {"dir": "/etc"}, 403, "relative to the server root"),
    (("experiments",), {"dir": "nb/../../x"}, 403, "without '..'"),
    (("artefacts", "../../etc/passwd"), {"dir": "nb"}, 404, "no API endpoint"),
    (("artefacts", "..%2F..%2Fetc%2Fpasswd"), {"dir": "nb"}, 400, "64 lowercase hex digits"),
    (("artefacts", "not-a-hash"), {"dir": "nb"}, 400, "64 lowercase hex digits"),
    (("artefacts", "0" * 64), {"dir": "nb"}, 404, "no artefact"),
    (("experiments", "a/b", "versions"), {"dir": "nb"}, 404, "no API endpoint"),
    (("experiments", "a\\b", "versions"), {"dir": "nb"}, 400, "contains a path separator"),
    (("experiments", "a\tb", "versions"), {"dir": "nb"}, 400, "contains a control character"),
    (("experiments", "nope", "versions"), {"dir": "nb"}, 404, "no experiment named 'nope'"),
    (("experiments", "ioi", "versions", "v9"), {"dir": "nb"}, 404, "has versions v1..v2, not v9"),
    (("experiments", "ioi", "diff"), {"dir": "nb", "a": "v1"}, 400, "diff needs two versions"),
    (("experiments",), {"dir": "nb", "offset": "-1"}, 400, "offset must be >= 0"),
    (("experiments",), {"dir": "nb", "limit": "many"}, 400, "must be integers"),
    (("experiments", "ioi", "runs"), {"dir": "nb", "status": "weird"}, 400, "status filter 'weird'"),
    (("runs", "abc"), {"dir": "nb"}, 400, "a run id is a positive integer"),
    (("runs", "99"), {"dir": "nb"}, 404, "no run with id 99"),
])
async def test_bad_requests_get_a_json_4xx(jp_fetch, store, parts, params, status, message):
    code, text = await error(jp_fetch, *parts, **params)
    assert code == status and message in text


@pytest.mark.parametrize("body, message", [
    ("{not json", "not valid JSON"), ("[1, 2]", "must be a JSON object"), ('{"note": 3}', "a note must be a string"),
    ('{"add_tags": "x"}', '"add_tags" must be a list of strings'), ('{"colour": "red"}', "must be a JSON object"),
    ('{"add_tags": ["a/b"]}', "tag 'a/b' contains a path separator"),
])
async def test_bad_edits_are_refused_and_change_nothing(jp_fetch, store, body, message):
    before = store.run(1)
    code, text = await error(jp_fetch, "runs", "1", method="PATCH", body=body, dir="nb")
    assert code == 400 and message in text
    after = store.run(1)
    assert (after.note, after.tags) == (before.note, before.tags)


async def test_requests_without_authentication_are_rejected(jp_fetch, store):
    for method, body in (("GET", None), ("PATCH", '{"note": "x"}'), ("DELETE", None)):
        with pytest.raises(HTTPClientError) as info:
            await jp_fetch("arrakis", "api", "runs", "1", params={"dir": "nb"}, method=method, body=body,
                           headers={"Authorization": ""}, allow_nonstandard_methods=True)
        assert info.value.code == 403
    assert store.run(1).note == ""


WRITER = textwrap.dedent("""
    import sys
    from arrakis_jupyter.store import RunRecord, Store
    store = Store(sys.argv[1])
    for i in range(int(sys.argv[2])):
        store.record(RunRecord(name=f"exp{i % 3}", source=f"x = {i % 7}", result=i))
""")


async def test_reads_while_a_kernel_writes(jp_fetch, store, jp_root_dir):
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(jp_root_dir / "nb" / "experiments"), "1500"])
    totals = []
    try:
        while writer.poll() is None and len(totals) < 400:
            exps = await get(jp_fetch, "experiments", dir="nb")
            totals.append(sum(e["runs"] for e in exps["items"]))
            if any(e["name"] == "exp0" for e in exps["items"]):
                await get(jp_fetch, "experiments", "exp0", "versions", dir="nb")
    finally:
        assert writer.wait(timeout=120) == 0
    final = await get(jp_fetch, "experiments", dir="nb")
    assert totals == sorted(totals) and len(totals) > 5  # every read consistent, counts only grow
    assert sum(e["runs"] for e in final["items"]) == 4 + 1500


# ---- paging: one page of a version's runs, in SQL ---------------------------------------------------------------
async def test_a_version_pages_its_runs_newest_first_with_their_metrics_and_artefacts(jp_fetch, store):
    v2 = await get(jp_fetch, "experiments", "ioi", "versions", "v2", dir="nb")
    assert v2["run_count"] == 2 and v2["v"] == 2 and v2["source"] == "x = 2\nx"
    assert v2["runs"]["total"] == 2 and v2["runs"]["offset"] == 0 and v2["runs"]["limit"] == 50
    assert [r["run_id"] for r in v2["runs"]["items"]] == [3, 2]  # newest first
    assert {a["run_id"] for a in v2["artefacts"]} == {2} and len(v2["artefacts"]) == 3
    newest = await get(jp_fetch, "experiments", "ioi", "versions", "v2", dir="nb", limit=1)
    assert [r["run_id"] for r in newest["runs"]["items"]] == [3] and newest["runs"]["total"] == 2
    assert newest["artefacts"] == [] and newest["metrics"] == []  # only the page's runs
    older = await get(jp_fetch, "experiments", "ioi", "versions", "v2", dir="nb", offset=1, limit=1)
    assert [r["run_id"] for r in older["runs"]["items"]] == [2] and len(older["artefacts"]) == 3
    assert (await get(jp_fetch, "experiments", "ioi", "versions", "v2", dir="nb", offset=5))["runs"]["items"] == []

    runs = await get(jp_fetch, "experiments", "ioi", "runs", dir="nb", order="desc")
    assert [r["run_id"] for r in runs["items"]] == [3, 2, 1] and runs["total"] == 3
    middle = await get(jp_fetch, "experiments", "ioi", "runs", dir="nb", order="asc", offset=1, limit=1)
    assert [r["run_id"] for r in middle["items"]] == [2] and middle["total"] == 3
    by_version = await get(jp_fetch, "experiments", "ioi", "runs", dir="nb", hash=v2["hash"], order="desc",
                           offset=1, limit=50)
    assert [r["run_id"] for r in by_version["items"]] == [2] and by_version["total"] == 2
    code, message = await error(jp_fetch, "experiments", "ioi", "runs", dir="nb", order="sideways")
    assert code == 400 and "order must be 'asc' or 'desc'" in message


def fill_big_version(path, n: int = 50_000) -> None:
    """A store with one version of ``n`` runs, each with a metric and the same tensor artefact: written with
    direct SQL (n Store.record calls would take minutes)."""
    import sqlite3
    import uuid

    s = Store(path)
    s.record(RunRecord(name="big", source="x = 1", result=torch.ones(2), metrics=[("loss", 0, 1.0, 0.0)],
                       started=1e9))
    s.close()
    with sqlite3.connect(path / "arrakis.db") as c:
        (vid,) = c.execute("SELECT id FROM versions").fetchone()
        c.executemany("INSERT INTO runs (uid, version_id, started, duration, status, result, result_type, stdout, "
                      "stderr) VALUES (?, ?, ?, 0.01, 'ok', '1', 'int', '', '')",
                      ((uuid.uuid4().hex, vid, 1e9 + i) for i in range(1, n)))
        c.execute("INSERT INTO metrics (run_id, name, step, value, logged) SELECT id, 'loss', 0, started, started "
                  "FROM runs WHERE id > 1")
        c.execute("INSERT OR IGNORE INTO run_artefacts (run_id, hash) SELECT r.id, a.hash FROM runs r, artefacts a")


async def timed_get(jp_fetch, *parts, **params) -> tuple[float, int, dict]:
    """(best of three: seconds, bytes), payload."""
    best = None
    for _ in range(3):
        t = time.perf_counter()
        response = await jp_fetch("arrakis", "api", *parts, params=params)
        elapsed = time.perf_counter() - t
        best = min(best or elapsed, elapsed)
    return best, len(response.body), json.loads(response.body)


async def test_a_version_with_50000_runs_answers_one_page_fast_and_small(jp_fetch, jp_root_dir):
    fill_big_version(jp_root_dir / "experiments")
    numbers = {}
    seconds, size, v1 = await timed_get(jp_fetch, "experiments", "big", "versions", "v1", dir="")
    numbers["version"] = (seconds, size)
    assert v1["run_count"] == v1["runs"]["total"] == 50_000
    assert [r["run_id"] for r in v1["runs"]["items"]] == list(range(50_000, 49_950, -1))
    assert {m["run_id"] for m in v1["metrics"]} == {r["run_id"] for r in v1["runs"]["items"]}
    assert len(v1["artefacts"]) == 50
    for label, params in {"runs first page": {}, "runs middle page": {"offset": 25_000, "order": "desc"},
                          "runs last page": {"offset": 49_950}, "runs last page desc": {"offset": 49_950,
                                                                                       "order": "desc"},
                          "runs of the version": {"hash": v1["hash"], "offset": 100, "limit": 500}}.items():
        seconds, size, page = await timed_get(jp_fetch, "experiments", "big", "runs", dir="", **params)
        numbers[label] = (seconds, size)
        assert page["total"] == 50_000 and len(page["items"]) == params.get("limit", 50)
    assert page["items"][0]["run_id"] == 101
    print("50,000 runs:", {k: f"{s * 1e3:.1f} ms, {b / 1e3:.1f} KB" for k, (s, b) in numbers.items()})
    for label, (seconds, size) in numbers.items():
        assert seconds < 0.1 and size < 200_000, (label, seconds, size)


# ---- no 500s: odd ids, paths, bodies and values answer a JSON 4xx (or a correct 200) ----------------------------
@pytest.mark.parametrize("parts, params, method, body, status, message", [
    (("runs", str(2**63)), {"dir": "nb"}, "GET", None, 404, "no run with id 9223372036854775808"),
    (("runs", str(2**63 - 1)), {"dir": "nb"}, "GET", None, 404, "no run with id 9223372036854775807"),
    (("runs", "9" * 5000), {"dir": "nb"}, "GET", None, 404, "no run with id 999"),
    (("runs", "0"), {"dir": "nb"}, "GET", None, 404, "no run with id 0"),
    (("runs", "-1"), {"dir": "nb"}, "GET", None, 400, "a run id is a positive integer"),
    (("runs", "١٢"), {"dir": "nb"}, "GET", None, 400, "a run id is a positive integer"),
    (("runs", "²"), {"dir": "nb"}, "GET", None, 400, "a run id is a positive integer"),
    (("runs", str(2**63)), {"dir": "nb"}, "PATCH", '{"note": "x"}', 404, "no run with id 9223372036854775808"),
    (("experiments",), {"dir": "a" * 300}, "GET", None, 400, "longer than 255 bytes"),
    (("experiments",), {"dir": "nb/" + "é" * 200}, "GET", None, 400, "longer than 255 bytes"),
    (("experiments",), {"dir": "/".join(["d" * 200] * 30)}, "GET", None, 400, "is too long"),
    (("experiments",), {"dir": "nb\nx"}, "GET", None, 400, "control character"),  # tornado drops NUL itself
    (("experiments", "ioi", "versions", "v1"), {"dir": "nb", "limit": "9" * 30}, "GET", None, 400, "limit in 1..500"),
    (("experiments", "ioi", "versions", "v1"), {"dir": "nb", "offset": "9" * 30}, "GET", None, 400,
     "offset must be"),
    (("experiments", "ioi", "versions", "v" + "9" * 30), {"dir": "nb"}, "GET", None, 404, "not v999"),
    (("experiments", "ioi", "runs"), {"dir": "nb", "since": "not a time"}, "GET", None, 400, "since"),
    (("experiments", "ioi", "runs"), {"dir": "nb", "until": "9" * 400}, "GET", None, 400, "until"),
    (("runs", "1"), {"dir": "nb"}, "PATCH", "[" * 30_000 + "]" * 30_000, 400, "nested too deeply"),
    (("runs", "1"), {"dir": "nb"}, "PATCH", '{"note": "' + "x" * 2_000_000 + '"}', 413, "larger than"),
    (("runs", "1"), {"dir": "nb"}, "PATCH", b'{"note": "\xff"}', 400, "not valid JSON"),
    (("runs", "1"), {"dir": "nb"}, "PATCH", '{"note": "ok", "add_tags": ["fine", "a/b"]}', 400,
     "contains a path separator"),
    (("experiments", "ioi", "versions", "v1"), {"dir": "nb"}, "POST", "{}", 405, "Method Not Allowed"),
])
async def test_odd_requests_get_a_json_4xx(jp_fetch, store, parts, params, method, body, status, message):
    code, text = await error(jp_fetch, *parts, method=method, body=body, **params)
    assert code == status and message in text, (code, text)
    assert store.run(1).note == ""  # a refused edit changes nothing, not even the parts that were valid
    assert store.run(1).tags == ["a"]


async def test_a_missing_or_truncated_artefact_file_is_a_4xx(jp_fetch, store):
    run = await get(jp_fetch, "runs", "1", dir="nb")
    path = store.artefact(run["artefacts"][0]["hash"])[0]
    path.write_bytes(path.read_bytes()[:20])
    code, message = await error(jp_fetch, "experiments", "ioi", "diff", dir="nb", a="v1", b="v2")
    assert code == 409 and "an artefact file of the store cannot be read" in message
    path.unlink()
    code, message = await error(jp_fetch, "artefacts", run["artefacts"][0]["hash"], dir="nb")
    assert code == 404 and "is missing" in message


async def test_infinite_and_nan_values_are_sent_as_strings(jp_fetch, jp_root_dir):
    import sqlite3

    s = Store(jp_root_dir / "experiments")
    s.record(RunRecord(name="e", source="a = 1", result={"x": float("inf"), "big": 1e308, "n": 1.0},
                       metrics=[("loss", 0, 1e308, 0.0), ("gap", 0, float("inf"), 0.0)]))
    s.record(RunRecord(name="e", source="a = 2", result={"x": 1.0, "big": -1e308, "n": float("nan")},
                       metrics=[("loss", 0, -1e308, 0.0), ("gap", 0, 1.0, 0.0)]))
    with sqlite3.connect(s.db_path) as c:  # an old store could hold NaN in these JSON columns
        c.execute("""UPDATE runs SET model = '{"eps": NaN, "big": Infinity}', environment = '[-Infinity]'""")
    d = await get(jp_fetch, "experiments", "e", "diff", dir="", a="v1", b="v2")
    results = {r["path"]: r for r in d["results"]}
    assert results["result['x']"]["max_abs_diff"] == "inf" and results["result['big']"]["max_abs_diff"] == "inf"
    metrics = {m["metric"]: m for m in d["metrics"]}
    assert metrics["loss"]["delta"] == "-inf" and metrics["gap"]["a"] == "inf" and metrics["gap"]["delta"] == "-inf"
    run = await get(jp_fetch, "runs", "1", dir="")
    assert run["model"] == {"eps": "nan", "big": "inf"} and run["environment"] == ["-inf"]
    assert [m["value"] for m in run["metrics"]] == [1e308, "inf"]
    version = await get(jp_fetch, "experiments", "e", "versions", "v1", dir="")
    assert {m["name"]: m["value"] for m in version["metrics"]} == {"loss": 1e308, "gap": "inf"}


# ---- never read outside the root / the store ------------------------------------------------------------------
SECRET = b"ARRAKIS-SECRET-SENTINEL-5d1f"


@pytest.fixture
def outside(tmp_path):
    """A directory outside the server root (which is tmp_path/root_dir): a secret file and a whole store."""
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "passwd").write_bytes(SECRET + b"\n")
    s = Store(secret / "experiments")
    s.record(RunRecord(name=SECRET.decode(), source="secret = 1", result=torch.ones(2), note=SECRET.decode()))
    s.close()
    return secret


async def refused(jp_fetch, *parts, method="GET", body=None, **params):
    code, message = await error(jp_fetch, *parts, method=method, body=body, **params)
    assert SECRET.decode() not in message and "secret" not in message
    return code, message


async def test_symlinked_artefact_files_are_not_served(jp_fetch, store, outside):
    # a diff loads the artefacts of each version's last successful run: never one outside the store
    tensor = store.artefact((await get(jp_fetch, "runs", "1", dir="nb"))["artefacts"][0]["hash"])[0]
    tensor.unlink()
    tensor.symlink_to(outside / "passwd")
    code, message = await refused(jp_fetch, "experiments", "ioi", "diff", dir="nb", a="v1", b="v2")
    assert code == 403 and "not a regular file inside the store" in message
    tensor.unlink()
    code, message = await refused(jp_fetch, "experiments", "ioi", "diff", dir="nb", a="v1", b="v2")
    assert code == 404 and "is missing from the store" in message
    run = await get(jp_fetch, "runs", "2", dir="nb")
    for artefact in run["artefacts"]:
        path = store.artefact(artefact["hash"])[0]
        path.unlink()
        path.symlink_to(outside / "passwd")
        code, message = await refused(jp_fetch, "artefacts", artefact["hash"], dir="nb")
        assert code == 403 and "not a regular file inside the store" in message
    # a directory where the file should be
    path = store.artefact(run["artefacts"][0]["hash"])[0]
    path.unlink()
    path.mkdir()
    code, message = await refused(jp_fetch, "artefacts", run["artefacts"][0]["hash"], dir="nb")
    assert code == 403


async def test_stores_reached_through_symlinks_leaving_the_root_are_refused(jp_fetch, store, outside, jp_root_dir):
    store.close()
    (jp_root_dir / "linked").symlink_to(outside, target_is_directory=True)  # the dir itself
    (jp_root_dir / "leak").mkdir()
    (jp_root_dir / "leak" / "experiments").symlink_to(outside / "experiments", target_is_directory=True)
    (jp_root_dir / "leak2" / "experiments").mkdir(parents=True)
    (jp_root_dir / "leak2" / "experiments" / "arrakis.db").symlink_to(outside / "experiments" / "arrakis.db")
    (jp_root_dir / "leak3" / "experiments").mkdir(parents=True)
    for f in ("arrakis.db", "arrakis.db-wal", "arrakis.db-shm"):
        if (jp_root_dir / "nb" / "experiments" / f).exists():
            shutil.copy(jp_root_dir / "nb" / "experiments" / f, jp_root_dir / "leak3" / "experiments" / f)
    shutil.copytree(outside / "experiments" / "artefacts", outside / "artefacts")
    (jp_root_dir / "leak3" / "experiments" / "artefacts").symlink_to(outside / "artefacts", target_is_directory=True)
    before = (outside / "experiments" / "arrakis.db").read_bytes()
    for dir_ in ("linked", "leak", "leak2", "leak3"):
        for parts, method, body in ((("experiments",), "GET", None), (("store",), "GET", None),
                                    (("experiments", SECRET.decode(), "versions", "v1"), "GET", None),
                                    (("runs", "1"), "GET", None), (("runs", "1"), "PATCH", '{"note": "pwned"}'),
                                    (("experiments", SECRET.decode(), "versions", "v1"), "DELETE", None)):
            code, message = await refused(jp_fetch, *parts, method=method, body=body, dir=dir_)
            assert code == 403, (dir_, parts, method, code, message)
    assert (outside / "experiments" / "arrakis.db").read_bytes() == before
    assert len(list((outside / "artefacts").rglob("*.safetensors"))) == 1
    # a symlink that stays inside the root is fine
    (jp_root_dir / "alias").symlink_to(jp_root_dir / "nb", target_is_directory=True)
    assert (await get(jp_fetch, "experiments", dir="alias"))["total"] == 2


async def test_arrakis_home_outside_the_root_is_served_but_its_artefacts_stay_inside_it(jp_fetch, outside,
                                                                                        monkeypatch):
    monkeypatch.setenv("ARRAKIS_HOME", str(outside / "experiments"))
    exps = await get(jp_fetch, "experiments", dir="")
    assert [e["name"] for e in exps["items"]] == [SECRET.decode()]
    run = await get(jp_fetch, "runs", "1", dir="anything")
    digest = run["artefacts"][0]["hash"]
    tensor = await jp_fetch("arrakis", "api", "artefacts", digest, params={"dir": ""})
    assert tensor.code == 200
    path = Store(outside / "experiments").artefact(digest)[0]
    path.unlink()
    path.symlink_to(outside / "passwd")
    code, message = await refused(jp_fetch, "artefacts", digest, dir="")
    assert code == 403


# ---- read endpoints never create, migrate or write anything ------------------------------------------------------
def snapshot(folder) -> dict:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir()) if p.is_file()}


async def test_an_empty_database_file_is_no_store_yet_and_stays_empty(jp_fetch, jp_root_dir):
    db = jp_root_dir / "z" / "experiments" / "arrakis.db"
    db.parent.mkdir(parents=True)
    db.touch()
    assert (await get(jp_fetch, "experiments", dir="z"))["items"] == []
    assert (await get(jp_fetch, "store", dir="z"))["exists"] is False
    for parts in (("experiments", "x", "versions"), ("runs", "1")):
        code, message = await error(jp_fetch, *parts, dir="z")
        assert code == 404 and "no experiment store in z yet" in message
    code, _ = await error(jp_fetch, "runs", "1", method="PATCH", body='{"note": "x"}', dir="z")
    assert code == 404
    assert [p.name for p in db.parent.iterdir()] == ["arrakis.db"] and db.stat().st_size == 0


async def test_reads_leave_the_database_untouched(jp_fetch, store, jp_root_dir):
    store.close()
    folder = jp_root_dir / "nb" / "experiments"
    before = snapshot(folder)
    v1 = await get(jp_fetch, "experiments", "ioi", "versions", "v1", dir="nb")
    for parts, params in ((("store",), {}), (("experiments",), {}), (("experiments", "ioi", "versions"), {}),
                          (("experiments", "ioi", "runs"), {"order": "desc"}), (("runs", "2"), {}),
                          (("experiments", "ioi", "diff"), {"a": "v1", "b": "v2"})):
        await get(jp_fetch, *parts, dir="nb", **params)
    await jp_fetch("arrakis", "api", "artefacts", v1["artefacts"][0]["hash"], params={"dir": "nb"})
    after = snapshot(folder)
    assert after["arrakis.db"] == before["arrakis.db"]  # same bytes, same mtime
    # SQLite's own readers of a WAL database create the (empty) -wal and the -shm index when they are missing
    assert after.pop("arrakis.db-wal", (b"",))[0] == before.pop("arrakis.db-wal", (b"",))[0] == b""
    after.pop("arrakis.db-shm", None), before.pop("arrakis.db-shm", None)
    assert after == before


@pytest.mark.parametrize("user_version, message", [(1, "from a kernel"), (99, "upgrade arrakis_jupyter")])
async def test_a_store_of_another_schema_version_is_a_409_and_left_as_it_is(jp_fetch, jp_root_dir, user_version,
                                                                            message):
    import sqlite3

    from arrakis_jupyter.store.schema import SCHEMA_V1

    db = jp_root_dir / "experiments" / "arrakis.db"
    db.parent.mkdir()
    with sqlite3.connect(db) as c:
        c.executescript(SCHEMA_V1)
        c.execute("INSERT INTO experiments (name, created) VALUES ('old', 0)")
        c.execute(f"PRAGMA user_version = {user_version}")
    c.close()
    before = snapshot(db.parent)
    for parts, method, body in ((("experiments",), "GET", None), (("store",), "GET", None),
                                (("experiments", "old", "versions"), "GET", None),
                                (("runs", "1"), "PATCH", '{"note": "x"}')):
        code, text = await error(jp_fetch, *parts, method=method, body=body, dir="")
        assert code == 409 and message in text, (parts, text)
    assert snapshot(db.parent) == before


# ---- store work never blocks the server ----------------------------------------------------------------------------
async def test_a_held_write_lock_gives_writes_a_quick_503_and_blocks_nothing_else(jp_fetch, store, jp_root_dir):
    import asyncio

    locker = hold_write_lock(jp_root_dir / "nb" / "experiments" / "arrakis.db", 6)
    try:
        async def patch():
            t = time.perf_counter()
            with pytest.raises(HTTPClientError) as info:
                await jp_fetch("arrakis", "api", "runs", "1", params={"dir": "nb"}, method="PATCH",
                               body='{"note": "while locked"}')
            return time.perf_counter() - t, info.value.response

        task = asyncio.ensure_future(patch())
        latencies = []
        while not task.done():
            for parts in (("api", "status"), ("arrakis", "api", "experiments"), ("arrakis", "api", "runs", "1")):
                t = time.perf_counter()
                await jp_fetch(*parts, params={"dir": "nb"} if parts[0] == "arrakis" else {})
                latencies.append(time.perf_counter() - t)
        elapsed, response = await task
        assert response.code == 503 and int(response.headers["Retry-After"]) >= 1
        assert "another process held its write lock" in json.loads(response.body)["error"]
        assert 1.5 < elapsed < 3.5, elapsed
        assert len(latencies) > 20 and max(latencies) < 0.5, max(latencies)
    finally:
        locker.wait(timeout=30)
    response = await jp_fetch("arrakis", "api", "runs", "1", params={"dir": "nb"}, method="PATCH",
                              body='{"note": "after"}')
    assert json.loads(response.body)["note"] == "after"
