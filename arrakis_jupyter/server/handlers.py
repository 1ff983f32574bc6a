"""Tornado handlers of the REST API under ``/arrakis/api/`` (payloads built in api.py).

Every handler requires Jupyter's authentication (and, for writes, its XSRF check); ``dir`` names the
notebook's directory relative to the server root and is confined to it; names and artefact hashes are
validated; errors come back as ``{"error": message}`` with a 4xx status, never a traceback.
"""
from __future__ import annotations

import functools
import json
import os
import pathlib
import sqlite3
from typing import Any, Callable

import tornado.web
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join

from ..errors import ArrakisError, ArrakisKeyError, ArrakisValueError
from ..store import Store, StoreVersionError, check_name
from ..store.store import DB_NAME
from . import api

CONTENT_TYPES = {"png": "image/png", "html": "text/html; charset=utf-8", "dataframe": "application/json",
                 "series": "application/json", "tensor": "application/octet-stream",
                 "ndarray": "application/octet-stream"}


class PathError(ArrakisError):
    """A ``dir`` that points outside the server root."""


class StoreLocator:
    """Finds (and caches) the store of a notebook directory, never outside the server root."""

    def __init__(self, root_dir: str) -> None:
        self.root = pathlib.Path(root_dir).resolve()
        self._stores: dict[pathlib.Path, Store] = {}

    def path(self, dir_: str) -> pathlib.Path:
        """The store of notebooks in ``dir_``: ``<root>/<dir_>/experiments``, or ``$ARRAKIS_HOME`` when the
        server (and so its kernels) has it set."""
        parts = [p for p in (dir_ or "").replace("\\", "/").split("/") if p not in ("", ".")]
        if any(p == ".." for p in parts) or (dir_ or "").startswith(("/", "\\")) or ":" in (dir_ or ""):
            raise PathError(f"dir {dir_!r} must be a path relative to the server root, without '..'")
        target = self.root.joinpath(*parts).resolve()
        if target != self.root and self.root not in target.parents:
            raise PathError(f"dir {dir_!r} leaves the server root")
        home = os.environ.get("ARRAKIS_HOME")
        return pathlib.Path(home).resolve() if home else target / "experiments"

    def store(self, dir_: str, required: bool = True) -> Store | None:
        """The store for ``dir_``; None (or a 404 when ``required``) when there is none yet: never created here."""
        path = self.path(dir_)
        if path not in self._stores:
            if not (path / DB_NAME).is_file():
                if required:
                    raise ArrakisKeyError(f"there is no experiment store in {dir_ or 'the server root'} yet: run a "
                                          "%%arrakis cell there first")
                return None
            self._stores[path] = Store(path)
        return self._stores[path]


def json_api(method: Callable) -> Callable:
    """Run a handler method; map our errors to JSON 4xx answers (unexpected ones to a bare 500)."""

    @functools.wraps(method)
    def wrapper(self: "ArrakisHandler", *args: Any, **kwargs: Any) -> None:
        try:
            payload = method(self, *args, **kwargs)
        except PathError as e:
            return self.fail(403, str(e))
        except ArrakisKeyError as e:
            return self.fail(404, str(e))
        except StoreVersionError as e:
            return self.fail(409, str(e))
        except (ArrakisError, ValueError) as e:
            return self.fail(400, str(e))
        except sqlite3.Error as e:
            self.log.error("arrakis store error: %s", e)
            return self.fail(503, "the experiment store is busy or unreadable; try again")
        if payload is not None:
            self.finish(json.dumps(payload, allow_nan=False, default=str))

    return wrapper


class ArrakisHandler(APIHandler):
    @property
    def locator(self) -> StoreLocator:
        return self.settings["arrakis_locator"]

    def fail(self, status: int, message: str) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": message}))

    def write_error(self, status_code: int, **kwargs: Any) -> None:  # no tracebacks, ever
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = self._reason or "internal error"
        if isinstance(exc, tornado.web.HTTPError) and exc.log_message:  # e.g. "'_xsrf' argument missing"
            try:
                message = exc.log_message % exc.args
            except (TypeError, ValueError):
                message = exc.log_message
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": message}))

    def dir(self) -> str:
        return self.get_query_argument("dir", "")

    def store(self) -> Store:
        return self.locator.store(self.dir())

    def paging(self) -> tuple[int, int]:
        return api.paging(self.get_query_argument("offset", None), self.get_query_argument("limit", None))

    def name(self, raw: str) -> str:
        return check_name(raw)

    def body(self) -> Any:
        try:
            return json.loads(self.request.body or b"")
        except (ValueError, UnicodeDecodeError):
            raise ArrakisValueError("the request body is not valid JSON") from None

    def run_id(self, raw: str) -> int:
        if not raw.isdigit():
            raise ArrakisValueError(f"a run id is a positive integer, got {raw!r}")
        return int(raw)


class StoreHandler(ArrakisHandler):
    @tornado.web.authenticated
    @json_api
    def get(self) -> dict:
        store = self.locator.store(self.dir(), required=False)
        path = self.locator.path(self.dir())
        from ..store.schema import schema_version

        return {"dir": self.dir(), "path": str(path), "exists": store is not None,
                "schema_version": schema_version(store._conn()) if store is not None else None}


class ExperimentsHandler(ArrakisHandler):
    @tornado.web.authenticated
    @json_api
    def get(self) -> dict:
        return api.experiments(self.locator.store(self.dir(), required=False), self.get_query_argument("q", ""),
                               *self.paging())


class VersionsHandler(ArrakisHandler):
    @tornado.web.authenticated
    @json_api
    def get(self, name: str) -> dict:
        return api.versions(self.store(), self.name(name), *self.paging())


class VersionHandler(ArrakisHandler):
    @tornado.web.authenticated
    @json_api
    def get(self, name: str, ref: str) -> dict:
        return api.version(self.store(), self.name(name), ref, self.base_url, self.dir())

    @tornado.web.authenticated
    @json_api
    def delete(self, name: str, ref: str) -> dict:
        return {"deleted_runs": self.store().delete_version(self.name(name), ref)}


class RunsHandler(ArrakisHandler):
    @tornado.web.authenticated
    @json_api
    def get(self, name: str) -> dict:
        args = {k: self.get_query_argument(k, None) for k in ("hash", "status", "tag", "since", "until")}
        return api.runs(self.store(), self.name(name), args, *self.paging())


class RunHandler(ArrakisHandler):
    @tornado.web.authenticated
    @json_api
    def get(self, run_id: str) -> dict:
        return api.run(self.store(), self.run_id(run_id), self.base_url, self.dir())

    @tornado.web.authenticated
    @json_api
    def patch(self, run_id: str) -> dict:
        return api.patch_run(self.store(), self.run_id(run_id), self.body())


class DiffHandler(ArrakisHandler):
    @tornado.web.authenticated
    @json_api
    def get(self, name: str) -> dict:
        a, b = self.get_query_argument("a", None), self.get_query_argument("b", None)
        if not a or not b:
            raise ArrakisValueError("diff needs two versions: ?a=...&b=... (hashes, prefixes or v1, v2, ...)")
        return api.diff(self.store(), self.name(name), a, b)


class ArtefactHandler(ArrakisHandler):
    def finish(self, chunk: Any = None) -> Any:  # file bytes keep their own Content-Type (APIHandler forces JSON)
        if isinstance(chunk, bytes):
            return tornado.web.RequestHandler.finish(self, chunk)
        return super().finish(chunk)

    @tornado.web.authenticated
    @json_api
    def get(self, digest: str) -> None:
        path, kind = self.store().artefact(digest)
        self.set_header("Content-Type", CONTENT_TYPES[kind])
        if kind in ("tensor", "ndarray"):
            self.set_header("Content-Disposition", f'attachment; filename="{digest[:12]}{path.suffix}"')
        self.finish(path.read_bytes())


class UnknownHandler(ArrakisHandler):
    """Any other path under /arrakis/api/: a JSON 404 (not Jupyter's HTML page)."""

    @tornado.web.authenticated
    def get(self, path: str) -> None:
        self.fail(404, f"no API endpoint {path!r} under /arrakis/api/: see arrakis_jupyter/server/handlers.py")

    patch = delete = post = put = get


def setup_handlers(web_app: Any, root_dir: str) -> None:
    web_app.settings["arrakis_locator"] = StoreLocator(root_dir)
    base = url_path_join(web_app.settings["base_url"], "arrakis", "api")
    name = r"([^/]+)"
    routes = [
        ("store", StoreHandler), ("experiments", ExperimentsHandler),
        (f"experiments/{name}/versions", VersionsHandler), (f"experiments/{name}/versions/{name}", VersionHandler),
        (f"experiments/{name}/runs", RunsHandler), (f"experiments/{name}/diff", DiffHandler),
        (r"runs/([^/]+)", RunHandler), (r"artefacts/([^/]+)", ArtefactHandler), (r"(.*)", UnknownHandler),
    ]
    web_app.add_handlers(".*$", [(url_path_join(base, path), handler) for path, handler in routes])
