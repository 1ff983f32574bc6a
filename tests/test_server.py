"""The server extension's REST API (jupyter_server's pytest plugin: a real server in the test process)."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from tornado.httpclient import HTTPClientError

from arrakis_jupyter.store import RunRecord, Store

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
    assert [r["run_id"] for r in v1["runs"]] == [1]
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
