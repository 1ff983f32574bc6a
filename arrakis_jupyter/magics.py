"""IPython magics: ``%%arrakis`` / ``%%arrakis_log`` record a cell as an experiment version and run;
``%arrakis`` inspects the store. Load with ``%load_ext arrakis_jupyter``."""
from __future__ import annotations

import ast
import os
import pathlib
import weakref
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments
from IPython.utils._process_common import arg_split

from .errors import ArrakisError
from .recording import Recorder
from .store import Store, check_name, default_store_dir, source_hash

LINE_USAGE = """%arrakis list                  experiments in the store
%arrakis show NAME [VERSION]   a version's source and runs (default: the latest version)
%arrakis runs NAME [VERSION]   the runs of an experiment (or of one version)
%arrakis diff NAME [A B]       compare two versions (default: the last two)
%arrakis open [DIR]            show the store in use, or switch to the store in DIR
%arrakis export PATH [NAME...] write the store (or some experiments) to a zip archive
%arrakis import PATH           merge an archive into the store
%arrakis gc [--dry-run]        remove artefact files no run uses and temporary files of killed writers
VERSION is a hash, a unique hash prefix (4+ hex digits) or v1, v2, ... (oldest first)."""


def _split(line: str, usage: str) -> list[str]:
    """Shell-like words (quotes removed); an unbalanced quote is a UsageError."""
    try:
        return arg_split(line, posix=True)
    except ValueError as e:
        raise UsageError(f"cannot parse {line.strip()!r}: {e} (quote values that have spaces)\n{usage}") from None


def _notebook_path(user_ns: dict) -> str | None:
    """The notebook running this kernel, where the front end tells (JupyterLab, VS Code)."""
    for value in (user_ns.get("__session__"), os.environ.get("JPY_SESSION_NAME"), user_ns.get("__vsc_ipynb_file__")):
        if isinstance(value, str) and value:
            return value
    return None


@magics_class
class ArrakisMagics(Magics):
    """``%%arrakis NAME``, ``%%arrakis_log NAME`` and ``%arrakis ...``."""

    def __init__(self, shell: Any) -> None:
        super().__init__(shell)
        self.store_dir: pathlib.Path | None = None  # None: default_store_dir() when a store is first needed
        self._store: Store | None = None
        self._tools: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()
        self.cell_id: str | None = None
        shell.events.register("pre_run_cell", self._pre_run_cell)

    def _pre_run_cell(self, info: Any) -> None:
        self.cell_id = getattr(info, "cell_id", None)

    @property
    def store(self) -> Store:
        root = (self.store_dir or default_store_dir()).resolve()
        if self._store is None or self._store.root != root:
            self._store = Store(root)
        return self._store

    # ---- %%arrakis / %%arrakis_log ------------------------------------------------------------
    @magic_arguments()
    @argument("name", help="experiment name (quote it if it has spaces)")
    @argument("--model", metavar="VAR", help="variable holding the HookedAutoModel (default: the last one created)")
    @argument("--tools", metavar="KEY1,KEY2", help="tools to bind to the model as variables of the same name")
    @argument("--tag", action="append", default=[], metavar="T", help="tag the run (repeatable)")
    @argument("--note", default="", metavar="TEXT", help="a free-text note kept with the run")
    @argument("--no-store", action="store_true", help="run with the tools but record nothing")
    @cell_magic("arrakis")
    def arrakis(self, line: str, cell: str) -> Any:
        """Run the cell as a version of experiment NAME with the listed tools bound to the model."""
        __tracebackhide__ = True
        args = self._parse(self.arrakis, line)
        model = self._model(args.model, required=bool(args.tools))
        tools = self._tool_objects(model, args.tools)
        saved = {k: self.shell.user_ns[k] for k in tools if k in self.shell.user_ns}
        self.shell.user_ns.update(tools)
        try:
            return self._run(args, cell, model, store=not args.no_store,
                             arguments={"model": args.model, "tools": sorted(tools)})
        finally:
            for key, tool in tools.items():
                if self.shell.user_ns.get(key) is tool:
                    if key in saved:
                        self.shell.user_ns[key] = saved[key]
                    else:
                        del self.shell.user_ns[key]

    @magic_arguments()
    @argument("name", help="experiment name (quote it if it has spaces)")
    @argument("--model", metavar="VAR", help="variable holding a HookedAutoModel whose fingerprint is recorded")
    @argument("--tag", action="append", default=[], metavar="T", help="tag the run (repeatable)")
    @argument("--note", default="", metavar="TEXT", help="a free-text note kept with the run")
    @cell_magic("arrakis_log")
    def arrakis_log(self, line: str, cell: str) -> Any:
        """Record any cell as a version and run of experiment NAME (no model or tools needed)."""
        __tracebackhide__ = True
        args = self._parse(self.arrakis_log, line)
        model = self._model(args.model, required=False) if args.model else None
        return self._run(args, cell, model, store=True, arguments={"model": args.model})

    def _parse(self, magic: Any, line: str) -> Any:
        """Every argument checked before the cell's body runs: a run that happened is never lost
        for an argument we could not record (a UsageError carrying the usage text instead)."""
        args = magic.parser.parse_args(_split(line, magic.parser.format_usage()))
        try:
            check_name(args.name)
            for tag in args.tag:
                check_name(tag, "tag")
        except ArrakisError as e:
            raise UsageError(f"{e}\n{magic.parser.format_usage()}") from None
        return args

    def _writable_store(self) -> Store:
        """The store the run will be recorded in, checked before the body runs."""
        try:
            store = self.store
        except ArrakisError as e:
            raise UsageError(f"cannot record this run: {e}") from None
        if store.read_only:
            raise UsageError(f"cannot record this run: the experiment store {store.root} is read-only "
                             f"({store.read_only_reason}); switch to a writable one with %arrakis open DIR, or run "
                             "%%arrakis with --no-store")
        return store

    def _model(self, var: str | None, required: bool) -> Any:
        from .model import HookedAutoModel

        if var is not None:
            if var not in self.shell.user_ns:
                known = [k for k, v in self.shell.user_ns.items() if isinstance(v, HookedAutoModel) and not
                         k.startswith("_")]
                raise UsageError(f"--model {var}: no variable named {var!r}; variables holding a HookedAutoModel: "
                                 f"{', '.join(known) or 'none'}")
            model = self.shell.user_ns[var]
            if not isinstance(model, HookedAutoModel):
                raise UsageError(f"--model {var}: {var} is a {type(model).__name__}, not a HookedAutoModel")
            return model
        model = HookedAutoModel.last_created()
        if model is None and required:
            raise UsageError("--tools needs a model and none exists yet: create one (arrakis_jupyter.load_model() or "
                             "HookedAutoModel.from_pretrained(...)) or pass --model VAR")
        return model

    def _tool_objects(self, model: Any, keys: str | None) -> dict[str, Any]:
        if not keys:
            return {}
        from .bench import ToolDict

        tools = self._tools.get(model)
        if tools is None:
            tools = self._tools[model] = ToolDict(model)
        out = {}
        for key in (k.strip() for k in keys.split(",") if k.strip()):
            if not key.isidentifier():
                raise UsageError(f"--tools: {key!r} is not a valid variable name; tools: {', '.join(tools.available())}")
            if key not in tools:
                raise UsageError(f"--tools: unknown tool {key!r}; available tools: {', '.join(tools.available())}")
            out[key] = tools[key]
        return out

    def _run(self, args: Any, cell: str, model: Any, store: bool, arguments: dict) -> Any:
        __tracebackhide__ = True
        recorder = Recorder(self._writable_store() if store else None, args.name, cell.rstrip(), kind="cell", model=model,
                            arguments=arguments, tags=args.tag,
                            note=args.note, notebook=_notebook_path(self.shell.user_ns), cell_id=self.cell_id)
        try:
            with recorder:
                recorder.result = self._execute(cell)
        finally:
            if recorder.run_id is not None:
                digest = source_hash(recorder.source)
                print(f"[arrakis] {args.name} v{self.store.version_number(args.name, digest)} ({digest}) · run "
                      f"{recorder.run_id} · {recorder.status} · {recorder.duration:.2f} s")
        return recorder.result

    def _execute(self, cell: str) -> Any:
        """Run the cell's code in the user namespace; return its last expression's value (like a cell)."""
        __tracebackhide__ = True
        shell = self.shell
        code = shell.transform_cell(cell)
        filename = shell.compile.cache(code, shell.execution_count, raw_code=cell)
        tree = shell.transform_ast(shell.compile.ast_parse(code, filename=filename))
        last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
        if tree.body:
            exec(shell.compile(tree, filename, "exec"), shell.user_ns)
        if last is not None:
            return eval(shell.compile(ast.Expression(last.value), filename, "eval"), shell.user_ns)
        return None

    # ---- %arrakis -------------------------------------------------------------------------------
    @line_magic("arrakis")
    def arrakis_line(self, line: str) -> Any:
        words = _split(line.strip(), LINE_USAGE)
        if not words:
            raise UsageError(LINE_USAGE)
        command, rest = words[0], words[1:]
        try:
            if command == "list" and not rest:
                return self.store.experiments()
            if command == "show" and len(rest) in (1, 2):
                name = rest[0]
                ref = rest[1] if len(rest) == 2 else f"v{len(self.store.versions(name))}"
                return self.store.version(name, ref)
            if command == "runs" and len(rest) in (1, 2):
                return self.store.runs(*rest)
            if command == "diff" and len(rest) in (1, 3):
                name = rest[0]
                if len(rest) == 1:
                    n = len(self.store.versions(name))
                    if n < 2:
                        raise UsageError(f"experiment {name!r} has {n} version; diff needs two")
                    return self.store.diff(name, f"v{n - 1}", f"v{n}")
                return self.store.diff(*rest)
            if command == "open" and len(rest) <= 1:
                if rest:  # opened (and so checked) before it replaces the store in use
                    self._store = Store(pathlib.Path(rest[0]).expanduser())
                    self.store_dir = self._store.root
                store = self.store
                mode = f", read-only: {store.read_only_reason}" if store.read_only else ""
                return f"experiment store: {store.root} ({len(store.experiments())} experiments{mode})"
            if command == "gc" and set(rest) <= {"--dry-run"}:
                report = self.store.gc(dry_run=bool(rest))
                verb = "would remove" if rest else "removed"
                print(f"{verb} {len(report['files'])} unused files ({report['bytes']:,} bytes) and "
                      f"{report['entries']} unused artefact entries from {self.store.root}")
                return report
            if command == "export" and rest:
                return f"exported to {self.store.export(rest[0], rest[1:] or None)}"
            if command == "import" and len(rest) == 1:
                return self.store.import_(rest[0])
        except ArrakisError as e:
            raise UsageError(str(e)) from None
        raise UsageError(f"%arrakis {line.strip()}: unknown command or wrong arguments.\n{LINE_USAGE}")

    arrakis_line.__doc__ = "Inspect the experiment store.\n\n" + LINE_USAGE

