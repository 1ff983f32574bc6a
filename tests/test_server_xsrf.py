"""Writes need Jupyter's XSRF protection when a request is authenticated by a login cookie (a browser
session) rather than a token."""
from __future__ import annotations

import json

import pytest
from tornado.httpclient import HTTPClientError

from arrakis_jupyter.store import RunRecord, Store

@pytest.fixture
def jp_server_config():
    return {"ServerApp": {"jpserver_extensions": {"arrakis_jupyter": True}, "disable_check_xsrf": False}}


async def test_cookie_sessions_need_an_xsrf_token_to_write(jp_fetch, jp_root_dir, jp_auth_header, monkeypatch):
    monkeypatch.delenv("ARRAKIS_HOME", raising=False)
    store = Store(jp_root_dir / "experiments")
    store.record(RunRecord(name="e", source="x"))
    token = jp_auth_header["Authorization"].split()[1]
    login = await jp_fetch("api", "status", params={"token": token}, headers={"Authorization": ""})
    cookies = "; ".join(c.split(";", 1)[0] for c in login.headers.get_list("Set-Cookie"))
    assert cookies, "the server set no login cookie"
    session = {"Authorization": "", "Cookie": cookies}
    ok = await jp_fetch("arrakis", "api", "experiments", headers=session)
    assert json.loads(ok.body)["total"] == 1  # reads with the session cookie are fine
    for method, parts, body in (("PATCH", ("runs", "1"), '{"note": "x"}'),
                                ("DELETE", ("experiments", "e", "versions", "v1"), None)):
        with pytest.raises(HTTPClientError) as info:
            await jp_fetch("arrakis", "api", *parts, method=method, body=body, headers=session,
                           allow_nonstandard_methods=True)
        assert info.value.code == 403 and b"_xsrf" in info.value.response.body
    assert store.run(1).note == "" and len(store.versions("e")) == 1
