"""Tornado handlers of the REST API under ``/arrakis/api/`` (payloads built in api.py).

Every handler requires Jupyter's authentication (and, for writes, its XSRF check). Store work (finding
and opening stores, queries, writes, reading artefact files, JSON encoding) never runs on the event
loop: ``store_api`` runs a handler's body in a thread pool, so a kernel holding SQLite's write lock
slows no other request. Reads open stores read-only (they never create, migrate or write anything);
writes wait at most ``LOCK_TIMEOUT`` seconds for the lock, then answer 503 with Retry-After.

``dir`` names the notebook's directory relative to the server root and is confined to it, through
symlinks too: a store, its database or its artefacts that resolve outside (the root, or the store)
are refused. Errors come back as ``{"error": message}`` with a 4xx status (503 when busy), never a
traceback.
"""
from __future__ import annotations

import asyncio
import errno
import functools
import json
import os
import pathlib
import sqlite3
import stat
import threading
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

import tornado.httputil
import tornado.web
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join

from ..errors import ArrakisError, ArrakisKeyError, ArrakisValueError
from ..store import Store, StoreBusyError, StoreError, StoreVersionError, check_name
from ..store.sqlite import is_busy
from ..store.store import DB_NAME, MAX_RUN_ID
from . import api
from .api import PathError

CONTENT_TYPES = {"png": "image/png", "html": "text/html; charset=utf-8", "dataframe": "application/json",
                 "series": "application/json", "tensor": "application/octet-stream",
                 "ndarray": "application/octet-stream"}
READS = ThreadPoolExecutor(4, thread_name_prefix="arrakis-read")  # reads never queue behind writes
WRITES = ThreadPoolExecutor(2, thread_name_prefix="arrakis-write")
LOCK_TIMEOUT = 2.0  # seconds a request waits for another process's lock on a store
RETRY_AFTER = 2
MAX_BODY = 1 << 20  # bytes of a PATCH body
NAME_MAX = 255  # bytes of one path component (Linux, macOS)
PATH_MAX = 4000


class BodyTooLarge(ArrakisValueError):
    """A request body over MAX_BODY (413)."""


def _inside(path: pathlib.Path, folder: pathlib.Path) -> bool:
    return path == folder or folder in path.parents


def _real(path: pathlib.Path | str) -> pathlib.Path:
    return pathlib.Path(os.path.realpath(path))


class StoreLocator:
    """Finds the store of a notebook directory (never through a link leading outside the server root) and
    caches its two Store objects: a read-only one for reads, a writable one with a short lock timeout."""

    def __init__(self, root_dir: str) -> None:
        self.root = _real(root_dir)
        self._stores: dict[tuple, Store] = {}
        self._lock = threading.Lock()

    def path(self, dir_: str) -> pathlib.Path:
        """The (real) store directory of notebooks in ``dir_``: ``<root>/<dir_>/experiments``, or
        ``$ARRAKIS_HOME`` when the server (and so its kernels) has it set."""
        raw = dir_ or ""
        shown = raw if len(raw) <= 80 else raw[:77] + "..."
        if any(unicodedata.category(c) in ("Cc", "Cs") for c in raw):
            raise ArrakisValueError(f"dir {shown!r} contains a control character")
        parts = [p for p in raw.replace("\\", "/").split("/") if p not in ("", ".")]
        if ".." in parts or raw.startswith(("/", "\\")) or ":" in raw:
            raise PathError(f"dir {shown!r} must be a path relative to the server root, without '..'")
        if any(len(p.encode()) > NAME_MAX for p in parts):
            raise ArrakisValueError(f"dir {shown!r} has a part longer than {NAME_MAX} bytes")
        if len(str(self.root).encode()) + len(raw.encode()) > PATH_MAX:
            raise ArrakisValueError(f"dir {shown!r} is too long")
        target = _real(self.root.joinpath(*parts))
        if not _inside(target, self.root):
            raise PathError(f"dir {shown!r} leaves the server root")
        home = os.environ.get("ARRAKIS_HOME")
        if home:
            return _real(home)
        store = _real(target / "experiments")
        if not _inside(store, self.root):
            raise PathError(f"the experiment store of {shown or 'the server root'} is a link leading outside the "
                            "server root: it is not served")
        return store

    def _found(self, folder: pathlib.Path) -> tuple[int, int] | None:
        """(device, inode) of the store's database, None when there is none yet (missing or empty);
        refuses a database, journal or artefacts folder that is a link leading outside the store."""
        for name in (DB_NAME, f"{DB_NAME}-wal", f"{DB_NAME}-shm", f"{DB_NAME}-journal", "artefacts"):
            path = folder / name
            if os.path.islink(path) and not _inside(_real(path), folder):
                raise PathError(f"the store's {name} is a link leading outside the store: it is not served")
        try:
            st = os.stat(folder / DB_NAME)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if stat.S_ISREG(st.st_mode) and st.st_size == 0:
            return None
        return st.st_dev, st.st_ino

    def store(self, dir_: str, required: bool = True, write: bool = False) -> Store | None:
        """The store for ``dir_`` (read-only unless ``write``); None (or a 404 when ``required``) when there
        is none yet: never created here. Raises StoreVersionError for a store of another schema version."""
        folder = self.path(dir_)
        found = self._found(folder)
        if found is None:
            if required or write:
                raise ArrakisKeyError(f"there is no experiment store in {dir_ or 'the server root'} yet: run a "
                                      "%%arrakis cell there first")
            return None
        key = (folder, *found)
        read = self._cached((*key, False), lambda: Store(folder, read_only=True, lock_timeout=LOCK_TIMEOUT))
        if not write:
            return read
        return self._cached((*key, True), lambda: Store(folder, lock_timeout=LOCK_TIMEOUT))

    def _cached(self, key: tuple, make: Callable[[], Store]) -> Store:
        with self._lock:
            store = self._stores.get(key)
        if store is None:
            store = make()  # outside the lock: may wait for another process's lock
            with self._lock:
                for old in [k for k in self._stores if k[0] == key[0] and k[-1] == key[-1] and k != key]:
                    del self._stores[old]  # the database was replaced
                store = self._stores.setdefault(key, store)
        return store


def read_artefact(store: Store, digest: str) -> tuple[bytes, str, pathlib.Path]:
    """(bytes, kind, real path) of an artefact: only a regular file inside the store's artefacts folder is read
    (opened without following links, checked again once open)."""
    path, kind = api.artefact_file(store, digest)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ArrakisKeyError(f"the file of artefact {digest} is missing from the store") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # replaced since it was checked
        os.close(fd)
        raise PathError(f"the file of artefact {digest} is not a regular file inside the store: it is not served")
    with os.fdopen(fd, "rb") as f:
        return f.read(), kind, path


def http_message(e: tornado.web.HTTPError) -> str:
    """The message of Tornado's error (e.g. "'_xsrf' argument missing from POST")."""
    if not e.log_message:
        return e.reason or tornado.httputil.responses.get(e.status_code, "error")
    try:
        return e.log_message % e.args
    except (TypeError, ValueError):
        return e.log_message


@dataclass
class FileReply:
    data: bytes
    content_type: str
    filename: str | None = None


def error_reply(e: BaseException) -> tuple[int, str]:
    """(HTTP status, message) of an error raised while answering a request."""
    if isinstance(e, tornado.web.HTTPError):  # e.g. a query argument that is not UTF-8
        return e.status_code, http_message(e)
    if isinstance(e, PathError):
        return 403, str(e)
    if isinstance(e, BodyTooLarge):
        return 413, str(e)
    if isinstance(e, ArrakisKeyError):
        return 404, str(e.args[0]) if e.args else str(e)
    if isinstance(e, StoreBusyError) or isinstance(e, sqlite3.OperationalError) and is_busy(e):
        return 503, str(e) if isinstance(e, StoreBusyError) else "the experiment store is busy; try again"
    if isinstance(e, (StoreVersionError, StoreError)):  # also StoreReadOnlyError
        return 409, str(e)
    if isinstance(e, RecursionError):
        return 400, "the request or its answer is nested too deeply"
    if isinstance(e, (ArrakisError, ValueError)):
        return 400, str(e)
    if isinstance(e, sqlite3.Error):
        return 503, f"the experiment store cannot be read: {e}"
    if isinstance(e, OSError):
        status = {errno.ENOENT: 404, errno.ENOTDIR: 404, errno.EACCES: 403, errno.EPERM: 403, errno.ELOOP: 403,
                  errno.ENAMETOOLONG: 400, errno.EINVAL: 400}.get(e.errno, 503)
        return status, f"the store cannot be read: {e.strerror or e}"
    return 500, f"internal error ({type(e).__name__}); see the Jupyter server's log"


def store_api(write: bool = False) -> Callable:
    """Run a handler method in the store thread pool (WRITES for ``write``) and answer its payload as JSON
    (a FileReply as the file), or the error it raised as ``{"error": ...}`` with a 4xx/503 status."""

    def decorate(method: Callable) -> Callable:
        def call(self: "ArrakisHandler", args: tuple) -> Any:
            payload = method(self, *args)
            return payload if isinstance(payload, FileReply) else api.dumps(payload)

        @functools.wraps(method)
        async def wrapper(self: "ArrakisHandler", *args: Any) -> None:
            loop = asyncio.get_running_loop()
            try:
                reply = await loop.run_in_executor(WRITES if write else READS, call, self, args)
            except Exception as e:  # noqa: BLE001 - every error becomes a JSON answer
                status, message = error_reply(e)
                if status == 500:
                    self.log.error("arrakis: %s %s failed", self.request.method, self.request.path, exc_info=True)
                elif status == 503:
                    self.log.warning("arrakis: %s %s: %s", self.request.method, self.request.path, message)
                if status == 503:
                    self.set_header("Retry-After", str(RETRY_AFTER))
                return self.fail(status, message)
            if isinstance(reply, FileReply):
                if reply.filename:
                    self.set_header("Content-Disposition", f'attachment; filename="{reply.filename}"')
                self.finish(reply.data, set_content_type=reply.content_type)
            else:
                self.finish(reply)

        return tornado.web.authenticated(wrapper)

    return decorate


class ArrakisHandler(APIHandler):
    @property
    def locator(self) -> StoreLocator:
        return self.settings["arrakis_locator"]

    def fail(self, status: int, message: str) -> None:
        self.set_status(status)
        self.finish(json.dumps({"error": message}))

    def write_error(self, status_code: int, **kwargs: Any) -> None:  # no tracebacks, ever
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = http_message(exc) if isinstance(exc, tornado.web.HTTPError) else None
        self.finish(json.dumps({"error": message or self._reason or "internal error"}))

    # request arguments (read in the pool thread: plain reads of the parsed request)
    def dir(self) -> str:
        return self.get_query_argument("dir", "")

    def arg(self, name: str) -> str | None:
        return self.get_query_argument(name, None)

    def store(self, write: bool = False) -> Store:
        return self.locator.store(self.dir(), write=write)

    def paging(self) -> tuple[int, int]:
        return api.paging(self.arg("offset"), self.arg("limit"))

    def name(self, raw: str) -> str:
        return check_name(raw)

    def body(self) -> Any:
        raw = self.request.body or b""
        if len(raw) > MAX_BODY:
            raise BodyTooLarge(f"the request body has {len(raw)} bytes, larger than the {MAX_BODY} an edit may have")
        try:
            return json.loads(raw)
        except RecursionError:
            raise ArrakisValueError("the request body is nested too deeply") from None
        except ValueError:  # UnicodeDecodeError included
            raise ArrakisValueError("the request body is not valid JSON") from None

    def run_id(self, raw: str) -> int:
        if not raw.isascii() or not raw.isdigit():
            raise ArrakisValueError(f"a run id is a positive integer, got {raw[:40]!r}")
        if len(raw) > 19 or not 1 <= int(raw) <= MAX_RUN_ID:
            raise ArrakisKeyError(f"no run with id {raw[:40]}{'...' if len(raw) > 40 else ''}")
        return int(raw)


class StoreHandler(ArrakisHandler):
    @store_api()
    def get(self) -> dict:
        store = self.locator.store(self.dir(), required=False)
        return {"dir": self.dir(), "path": str(self.locator.path(self.dir())), "exists": store is not None,
                "schema_version": store.schema_version() if store is not None else None}


class ExperimentsHandler(ArrakisHandler):
    @store_api()
    def get(self) -> dict:
        return api.experiments(self.locator.store(self.dir(), required=False), self.arg("q") or "", *self.paging())


class VersionsHandler(ArrakisHandler):
    @store_api()
    def get(self, name: str) -> dict:
        return api.versions(self.store(), self.name(name), *self.paging())


class VersionHandler(ArrakisHandler):
    @store_api()
    def get(self, name: str, ref: str) -> dict:
        return api.version(self.store(), self.name(name), ref, self.base_url, self.dir(), *self.paging())

    @store_api(write=True)
    def delete(self, name: str, ref: str) -> dict:
        return {"deleted_runs": self.store(write=True).delete_version(self.name(name), ref)}


class RunsHandler(ArrakisHandler):
    @store_api()
    def get(self, name: str) -> dict:
        args = {k: self.arg(k) for k in ("hash", "status", "tag", "since", "until", "order")}
        return api.runs(self.store(), self.name(name), args, *self.paging())


class RunHandler(ArrakisHandler):
    @store_api()
    def get(self, run_id: str) -> dict:
        return api.run(self.store(), self.run_id(run_id), self.base_url, self.dir())

    @store_api(write=True)
    def patch(self, run_id: str) -> dict:
        body = api.check_patch(self.body())
        run = self.run_id(run_id)
        return api.patch_run(self.store(write=True), run, body)


class DiffHandler(ArrakisHandler):
    @store_api()
    def get(self, name: str) -> dict:
        a, b = self.arg("a"), self.arg("b")
        if not a or not b:
            raise ArrakisValueError("diff needs two versions: ?a=...&b=... (hashes, prefixes or v1, v2, ...)")
        return api.diff(self.store(), self.name(name), a, b)


class ArtefactHandler(ArrakisHandler):
    @store_api()
    def get(self, digest: str) -> FileReply:
        data, kind, path = read_artefact(self.store(), digest)
        attachment = kind in ("tensor", "ndarray")
        return FileReply(data, CONTENT_TYPES.get(kind, "application/octet-stream"),
                         f"{digest[:12]}{path.suffix}" if attachment else None)


class UnknownHandler(ArrakisHandler):
    """Any other path under /arrakis/api/: a JSON 404 (not Jupyter's HTML page)."""

    @tornado.web.authenticated
    def get(self, path: str) -> None:
        self.fail(404, f"no API endpoint {path[:100]!r} under /arrakis/api/: see arrakis_jupyter/server/handlers.py")

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
