"""The Experiments sidebar (labextension/src, built into arrakis_jupyter/labextension/) in a real JupyterLab,
driven in headless Debian Chromium, against the real server extension and kernel magics.

The JupyterLab under test loads the extension from the repository's build output (put first on JUPYTER_PATH),
so what is tested is what ships in the wheel. Screenshots and timings land in test-artifacts/sidebar/.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import nbformat
import pytest

from browser import ARTIFACTS, JupyterLab, chromium_page, needs_chromium

ROOT = Path(__file__).resolve().parents[1]
BUILT = ROOT / "arrakis_jupyter" / "labextension"
OUT = ARTIFACTS / "sidebar"
SIDEBAR = "#arrakis-experiments"

pytestmark = [needs_chromium]


@pytest.fixture(scope="module", autouse=True)
def built_extension():
    pkg = BUILT / "package.json"
    if not pkg.exists() or "_build" not in json.loads(pkg.read_text()).get("jupyterlab", {}):
        pytest.fail(f"the lab extension is not built in {BUILT}: run `PATH=.venv/bin:$PATH npm run build` at the "
                    "repository root")
    OUT.mkdir(parents=True, exist_ok=True)


def start_lab(root: Path, settings: dict[str, dict] | None = None) -> JupyterLab:
    """JupyterLab on ``root`` with this repository's built extension, its own settings and workspaces, and the
    experiment store in ``root/experiments`` for both the server and the kernels."""
    ext = root / ".jupyter-path" / "labextensions"
    ext.mkdir(parents=True)
    (ext / "arrakis-jupyter").symlink_to(BUILT, target_is_directory=True)
    user_settings = root / ".lab-settings"
    for plugin, values in {"@jupyterlab/apputils-extension:notification": {"fetchNews": "false",
                                                                            "checkForUpdates": False},
                           **(settings or {})}.items():
        package, name = plugin.split(":")
        path = user_settings / package / f"{name}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    return JupyterLab(root, env={"ARRAKIS_HOME": str(root / "experiments"),
                                 "JUPYTER_PATH": str(root / ".jupyter-path"),
                                 "JUPYTERLAB_SETTINGS_DIR": str(user_settings),
                                 "JUPYTERLAB_WORKSPACES_DIR": str(root / ".lab-workspaces")})


def open_lab_home(page, lab: JupyterLab) -> None:
    """JupyterLab with no notebook open, once the app is restored and the sidebar exists."""
    page.goto(f"{lab.url}/lab?token={lab.token}")
    page.wait_for_function("() => window.jupyterapp && document.querySelector('#arrakis-experiments')",
                           timeout=60_000)
    page.evaluate("() => window.jupyterapp.restored")


def watch_errors(page) -> list[str]:
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    page.on("console", lambda m: m.type == "error" and "arrakis" in m.text.lower() and errors.append(m.text))
    return errors


def run_cell(page, index: int, timeout_ms: int = 120_000) -> None:
    """Run one cell of the current notebook and wait until it has finished (new execution count, kernel idle)."""
    page.evaluate("""async (i) => {
        const panel = window.jupyterapp.shell.currentWidget, nb = panel.content;
        window.__arrakisCount = nb.widgets[i].model.executionCount;
        nb.activeCellIndex = i;
        await window.jupyterapp.commands.execute('notebook:run-cell');
    }""", index)
    page.wait_for_function("""(i) => {
        const panel = window.jupyterapp.shell.currentWidget, cell = panel.content.widgets[i];
        return cell.model.executionCount !== null && cell.model.executionCount !== window.__arrakisCount
            && panel.sessionContext.session.kernel.status === 'idle';
    }""", arg=index, timeout=timeout_ms)


def widen_sidebar(page, fraction: float = 0.42) -> None:
    """Give the left sidebar more room for screenshots (JupyterLab's private split panel; best effort)."""
    page.evaluate("""(f) => { try {
        const split = window.jupyterapp.shell._hsplitPanel, sizes = split.relativeSizes();
        split.setRelativeSizes([f, 1 - f - sizes[2], sizes[2]]);
    } catch (e) { /* layout internals changed: keep the default width */ } }""", fraction)


def make_notebook(path: Path) -> None:
    """The example notebook of the sidebar (two code cells: load the magics, one %%arrakis cell)."""
    shutil.copy(ROOT / "examples" / "05_sidebar.ipynb", path)
    cells = nbformat.read(path, as_version=4).cells
    assert [c.cell_type for c in cells] == ["code", "code"] and cells[1].source.startswith("%%arrakis demo")


def test_sidebar_versions_diff_and_insert(tmp_path):
    make_notebook(tmp_path / "demo.ipynb")
    # polling off: the list must follow the kernel through the executed signal alone
    lab = start_lab(tmp_path, {"arrakis-jupyter:plugin": {"refreshInterval": 0}})
    try:
        with chromium_page(1500, 1000) as page:
            errors = watch_errors(page)
            lab.open(page, "demo.ipynb")
            page.evaluate("() => window.jupyterapp.commands.execute('arrakis:open')")
            sidebar = page.locator(SIDEBAR)
            sidebar.wait_for(state="visible", timeout=30_000)
            page.wait_for_selector(f"{SIDEBAR} .arrakis-empty", timeout=30_000)  # no store yet
            commands = page.evaluate("() => window.jupyterapp.commands.listCommands().filter(c => "
                                     "c.startsWith('arrakis:'))")
            assert {"arrakis:open", "arrakis:refresh", "arrakis:compare", "arrakis:insert-version",
                    "arrakis:delete-version"} <= set(commands)
            settings = page.evaluate("async () => { const s = await window.jupyterapp.serviceManager.settings"
                                     ".fetch('arrakis-jupyter:plugin'); return {props: s.schema.properties,"
                                     " user: s.settings}; }")
            assert settings["props"]["refreshInterval"]["default"] == 10_000
            assert settings["props"]["pageSize"]["default"] == 50
            assert settings["user"] == {"refreshInterval": 0}

            # first run: experiment demo appears with one version, without a manual refresh
            run_cell(page, 0)
            run_cell(page, 1)
            demo = page.locator(f"{SIDEBAR} .arrakis-exp-item[data-name='demo']")
            demo.wait_for(timeout=10_000)
            page.wait_for_function(f"() => document.querySelector(\"{SIDEBAR} .arrakis-exp-item[data-name='demo']"
                                   " .arrakis-counts\").textContent.startsWith('1 version')", timeout=10_000)
            widen_sidebar(page)
            page.screenshot(path=str(OUT / "01_first_run.png"))

            # edit the cell through the notebook model, run again: a second version, still no manual refresh
            page.evaluate("""() => {
                const cell = window.jupyterapp.shell.currentWidget.content.widgets[1];
                cell.model.sharedModel.setSource(cell.model.sharedModel.getSource().replace('x = 1', 'x = 41'));
            }""")
            started = time.perf_counter()
            run_cell(page, 1)
            page.wait_for_function(f"() => document.querySelector(\"{SIDEBAR} .arrakis-exp-item[data-name='demo']"
                                   " .arrakis-counts\").textContent === '2 versions · 2 runs'", timeout=10_000)
            print(f"sidebar updated {time.perf_counter() - started:.2f} s after the second run was started")
            assert "42" in page.locator(".jp-OutputArea-output").last.text_content()

            # expand demo: v1 and v2
            demo.locator(".arrakis-exp-row").click()
            versions = demo.locator(".arrakis-version-item")
            versions.nth(1).wait_for(timeout=10_000)
            assert versions.count() == 2
            assert [versions.nth(i).get_attribute("data-v") for i in range(2)] == ["1", "2"]
            hashes = [versions.nth(i).get_attribute("data-hash") for i in range(2)]
            assert all(len(h) >= 12 for h in hashes) and hashes[0] != hashes[1]

            # a version's detail: highlighted source, its run and the run's stdout
            versions.nth(1).click()
            detail = page.locator(f"{SIDEBAR} .arrakis-version-detail[data-v='2']")
            detail.wait_for(timeout=10_000)
            source = detail.locator(".arrakis-source")
            assert source.locator(".arrakis-line").all_text_contents() == ["x = 41", "print(x + 1)"]
            assert source.locator(".arrakis-tok-number").first.text_content() == "41"
            assert source.locator(".arrakis-tok-builtin").first.text_content() == "print"
            page.wait_for_selector(f"{SIDEBAR} .arrakis-run-detail .arrakis-stdout", timeout=10_000)
            assert page.locator(f"{SIDEBAR} .arrakis-run-detail .arrakis-stdout").text_content().strip() == "42"
            assert detail.locator(".arrakis-run-item").count() == 1
            page.screenshot(path=str(OUT / "02_version_detail.png"))

            # tick both and compare: a side-by-side diff with the edited line highlighted on each side
            for i in range(2):
                versions.nth(i).locator(".arrakis-version-check").check()
            compare = page.locator(f"{SIDEBAR} .arrakis-compare")
            assert compare.is_enabled() and compare.text_content() == "Compare v1 ↔ v2"
            compare.click()
            diff = page.locator(f"{SIDEBAR} .arrakis-compare-view[data-name='demo'] .arrakis-diff")
            diff.wait_for(timeout=10_000)
            assert diff.locator("td.arrakis-diff-del").all_text_contents() == ["1", "x = 1"]  # line number, code
            assert diff.locator("td.arrakis-diff-add").all_text_contents() == ["1", "x = 41"]
            changed = diff.locator("tr.arrakis-diff-change")
            assert changed.count() == 1
            assert changed.locator("td.arrakis-diff-code").all_text_contents() == ["x = 1", "x = 41"]
            assert diff.locator("tr.arrakis-diff-equal").count() == 1  # print(x + 1)
            page.screenshot(path=str(OUT / "03_compare.png"))
            # the unified view of the server's diff: -x = 1 / +x = 41
            page.locator(f"{SIDEBAR} .arrakis-toggle-unified").click()
            unified = page.locator(f"{SIDEBAR} .arrakis-diff-unified")
            unified.wait_for()
            assert unified.locator(".arrakis-diff-del").all_text_contents() == ["-x = 1"]
            assert unified.locator(".arrakis-diff-add").all_text_contents() == ["+x = 41"]
            # the results comparison table: None vs None (print returns nothing), metrics absent
            assert page.locator(f"{SIDEBAR} .arrakis-compare-results").count() == 1
            page.screenshot(path=str(OUT / "04_compare_unified.png"))

            # insert v1 into the notebook: a new cell below the active one (cell 1), with the magic it was run with
            page.evaluate("() => { window.jupyterapp.shell.currentWidget.content.activeCellIndex = 1; }")
            versions.nth(0).locator(".arrakis-insert").click()
            page.wait_for_function("() => window.jupyterapp.shell.currentWidget.content.widgets.length === 3",
                                   timeout=10_000)
            inserted = page.evaluate("""() => {
                const nb = window.jupyterapp.shell.currentWidget.content;
                return {active: nb.activeCellIndex, type: nb.widgets[2].model.type,
                        source: nb.widgets[2].model.sharedModel.getSource(),
                        above: nb.widgets[1].model.sharedModel.getSource()};
            }""")
            lines = inserted["source"].split("\n")
            assert lines[0] in ("%%arrakis_log demo", "%%arrakis demo"), inserted
            assert lines[1:] == ["x = 1", "print(x + 1)"], inserted
            assert inserted["active"] == 2 and inserted["type"] == "code"
            assert "x = 41" in inserted["above"]  # the edited cell is untouched
            page.screenshot(path=str(OUT / "05_inserted.png"))

            # running the inserted cell records v1 again: still two versions, one more run
            run_cell(page, 2)
            page.wait_for_function(f"() => document.querySelector(\"{SIDEBAR} .arrakis-exp-item[data-name='demo']"
                                   " .arrakis-counts\").textContent === '2 versions · 3 runs'", timeout=10_000)

            # tag v1's latest run from its detail ("+ tag" opens an input dialog); the version row shows the tag
            versions.nth(0).click()
            page.locator(f"{SIDEBAR} .arrakis-version-detail[data-v='1'] .arrakis-run-detail").wait_for(timeout=10_000)
            assert page.locator(f"{SIDEBAR} .arrakis-run-item").count() == 2
            page.locator(f"{SIDEBAR} .arrakis-add-tag").click()
            page.locator(".jp-Dialog input").fill("baseline")
            page.locator(".jp-Dialog .jp-mod-accept").click()
            page.wait_for_selector(f"{SIDEBAR} .arrakis-run-detail .arrakis-tag:has-text('baseline')", timeout=10_000)
            page.wait_for_selector(f"{SIDEBAR} .arrakis-version-item[data-v='1'] .arrakis-tag:has-text('baseline')",
                                   timeout=10_000)

            # the dark theme: the same views stay legible (colours come from JupyterLab's variables)
            page.evaluate("() => window.jupyterapp.commands.execute('apputils:change-theme', "
                          "{theme: 'JupyterLab Dark'})")
            page.wait_for_function("() => document.body.dataset.jpThemeLight === 'false'", timeout=30_000)
            page.wait_for_timeout(500)
            page.screenshot(path=str(OUT / "06_dark_version.png"))
            compare.click()
            diff.wait_for(timeout=10_000)
            page.screenshot(path=str(OUT / "07_dark_compare.png"))
            # the comparison opens in a main-area tab too (room for long lines)
            page.locator(f"{SIDEBAR} .arrakis-compare-view .arrakis-open-tab").click()
            tab = page.locator(".arrakis-tab .arrakis-compare-view[data-name='demo'] .arrakis-diff")
            tab.wait_for(timeout=10_000)
            assert tab.locator("td.arrakis-diff-add").all_text_contents() == ["1", "x = 41"]
            page.screenshot(path=str(OUT / "08_dark_compare_tab.png"))
            page.evaluate("() => window.jupyterapp.commands.execute('application:close')")

            # delete v2 with the command; it asks for confirmation first
            page.evaluate("() => { window.jupyterapp.commands.execute('arrakis:delete-version', "
                          "{name: 'demo', ref: 'v2'}); }")
            page.locator(".jp-Dialog .jp-mod-warn").click()
            page.wait_for_function(f"() => document.querySelector(\"{SIDEBAR} .arrakis-exp-item[data-name='demo']"
                                   " .arrakis-counts\").textContent === '1 version · 2 runs'", timeout=10_000)
            assert demo.locator(".arrakis-version-item").count() == 1
            assert page.locator(f"{SIDEBAR} .arrakis-compare").is_disabled()  # v2 left the selection
            assert page.locator(f"{SIDEBAR} .arrakis-diff").count() == 0  # the comparison it was in is gone
            assert not errors, errors
    finally:
        lab.stop()


def make_rich_store(path: Path) -> None:
    """One experiment whose run has a result of every stored kind, a PNG figure, metrics and outputs; and a
    failed run with a traceback."""
    import dataclasses

    import matplotlib
    import numpy as np
    import pandas as pd
    import torch

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from arrakis_jupyter.store import RunRecord, Store

    @dataclasses.dataclass
    class Point:
        x: int
        y: float

    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1, 2], [0, 1, 4])
    result = {"logits": torch.arange(6, dtype=torch.float32).reshape(2, 3), "acts": np.ones((4,), dtype=np.int64),
              "table": pd.DataFrame({"head": ["L0H1", "L2H3"], "score": [0.25, 0.75]}), "nan": float("nan"),
              "pair": (1, "a"), "keys": {1: "one"}, "point": Point(1, 2.5), "lock": __import__("threading").Lock(),
              "text": "hello"}
    store = Store(path)
    store.record(RunRecord(name="rich", source="# everything\nresult = compute()", result=result, figures=[fig],
                           metrics=[("loss", i, 1.0 / (i + 1), 0.0) for i in range(5)], stdout="out line\n",
                           stderr="warn line\n", tags=["demo"], note="all kinds"))
    store.record(RunRecord(name="rich", source="raise ValueError('boom')", status="error",
                           error="Traceback (most recent call last):\n  ...\nValueError: boom"))
    plt.close(fig)
    store.close()


def test_sidebar_renders_stored_results(tmp_path):
    make_rich_store(tmp_path / "experiments")
    lab = start_lab(tmp_path, {"arrakis-jupyter:plugin": {"refreshInterval": 0}})
    try:
        with chromium_page(1500, 1000) as page:
            errors = watch_errors(page)
            open_lab_home(page, lab)
            page.evaluate("() => window.jupyterapp.commands.execute('arrakis:open')")
            widen_sidebar(page, 0.5)
            exp = page.locator(f"{SIDEBAR} .arrakis-exp-item[data-name='rich']")
            exp.locator(".arrakis-exp-row").click()
            exp.locator(".arrakis-version-item[data-v='1']").click()
            run = page.locator(f"{SIDEBAR} .arrakis-run-detail")
            run.wait_for(timeout=10_000)
            result = run.locator(".arrakis-result")
            assert result.locator(".arrakis-val-tensor").text_content() == \
                "Tensor[2, 3] float32 · min 0 · max 5 · mean 2.5"
            assert result.locator(".arrakis-val-ndarray").text_content() == "ndarray[4] int64"
            assert result.locator(".arrakis-val-float").text_content() == "nan"
            assert result.locator(".arrakis-val-unserialisable").text_content().startswith(
                "_thread.lock (not stored): <unlocked _thread.lock object")
            keys = result.locator(".arrakis-tree-key").all_text_contents()
            assert {"logits", "acts", "table", "nan", "pair", "keys", "point", "lock", "text"} <= set(keys)
            # the DataFrame's rows come from its artefact file, fetched through the authenticated API
            result.locator(".arrakis-frame .arrakis-link").click()
            rows = result.locator(".arrakis-frame-table tbody tr")
            rows.nth(1).wait_for(timeout=10_000)
            assert rows.nth(1).locator("td").all_text_contents()[-2:] == ['"L2H3"', "0.75"]
            # the matplotlib figure as an image
            page.wait_for_function("() => { const img = document.querySelector("
                                   "'#arrakis-experiments .arrakis-figure-img'); "
                                   "return img && img.complete && img.naturalWidth > 0; }", timeout=10_000)
            assert run.locator(".arrakis-metrics tbody tr").count() == 1  # loss: last value, 5 points
            assert run.locator(".arrakis-metrics tbody td").nth(1).text_content() == "0.2"
            assert run.locator(".arrakis-stdout").text_content() == "out line\n"
            assert run.locator(".arrakis-stderr").text_content() == "warn line\n"
            assert run.locator(".arrakis-note").text_content() == "all kinds"
            page.screenshot(path=str(OUT / "09_results.png"))
            # the failed run (version 2): its traceback
            exp.locator(".arrakis-version-item[data-v='2']").click()
            page.locator(f"{SIDEBAR} .arrakis-version-detail[data-v='2'] .arrakis-traceback").wait_for(timeout=10_000)
            assert "ValueError: boom" in page.locator(f"{SIDEBAR} .arrakis-traceback").text_content()
            assert page.locator(f"{SIDEBAR} .arrakis-exp-item[data-name='rich'] .arrakis-badge").first \
                .text_content() == "error"
            assert not errors, errors
    finally:
        lab.stop()


def make_big_store(path: Path, runs: int = 10_000) -> float:
    from arrakis_jupyter.store import RunRecord, Store

    t0 = time.perf_counter()
    store = Store(path)
    for i in range(runs):
        store.record(RunRecord(name=f"exp{i % 20}", source=f"x = {i % 200}", result=i, started=1.7e9 + i))
    store.close()
    return time.perf_counter() - t0


MEASURE = """async () => {
    const app = window.jupyterapp, frame = () => new Promise(r => requestAnimationFrame(() => r()));
    const items = () => document.querySelectorAll('#arrakis-experiments .arrakis-exp-item').length;
    const timed = async (f) => { const t0 = performance.now(); await f(); await frame(); return performance.now() - t0; };
    const out = {};
    out.open_ms = await timed(() => app.commands.execute('arrakis:open'));
    out.experiments_drawn = items();
    out.refresh_ms = [];
    for (let i = 0; i < 5; i++) out.refresh_ms.push(await timed(() => app.commands.execute('arrakis:refresh')));
    const row = document.querySelector("#arrakis-experiments .arrakis-exp-item[data-name='exp7'] .arrakis-exp-row");
    out.expand_ms = await timed(async () => {
        row.click();
        while (document.querySelectorAll("#arrakis-experiments .arrakis-exp-item[data-name='exp7'] "
                                         + ".arrakis-version-item").length < 10) await frame();
    });
    out.versions_drawn = document.querySelectorAll('#arrakis-experiments .arrakis-version-item').length;
    out.version_detail_ms = await timed(async () => {
        document.querySelector("#arrakis-experiments .arrakis-version-item[data-v='3']").click();
        while (!document.querySelector('#arrakis-experiments .arrakis-run-detail')) await frame();
    });
    out.runs_drawn = document.querySelectorAll('#arrakis-experiments .arrakis-run-item').length;
    out.compare_ms = await timed(async () => {
        await app.commands.execute('arrakis:compare', {name: 'exp7', a: 'v1', b: 'v10'});
        while (!document.querySelector('#arrakis-experiments .arrakis-diff')) await frame();
    });
    return out;
}"""


def test_sidebar_draw_time_with_10000_runs(tmp_path):
    record_s = make_big_store(tmp_path / "experiments")
    lab = start_lab(tmp_path, {"arrakis-jupyter:plugin": {"refreshInterval": 0}})
    try:
        with chromium_page(1500, 1000) as page:
            errors = watch_errors(page)
            open_lab_home(page, lab)
            t = page.evaluate(MEASURE)
            widen_sidebar(page)
            page.screenshot(path=str(OUT / "10_10000_runs.png"))
            assert not errors, errors
    finally:
        lab.stop()
    t["record_10000_runs_s"] = round(record_s, 2)
    t["refresh_ms_median"] = sorted(t["refresh_ms"])[len(t["refresh_ms"]) // 2]
    t = {k: [round(x, 1) for x in v] if isinstance(v, list) else round(v, 1) if isinstance(v, float) else v
         for k, v in t.items()}
    (OUT / "timings.json").write_text(json.dumps({"runs": 10_000, "versions": 200, "experiments": 20, **t},
                                                 indent=2) + "\n")
    print("sidebar timings:", json.dumps(t))
    assert t["experiments_drawn"] == 20
    assert t["versions_drawn"] == 10  # exp7 has the sources x = 7, 27, ..., 187
    assert t["runs_drawn"] == 50  # one page of runs (each version has 50)
    assert t["open_ms"] < 500, t
    assert t["refresh_ms_median"] < 500, t


def test_sidebar_shows_older_runs_of_a_big_version_a_page_at_a_time(tmp_path):
    from arrakis_jupyter.store import RunRecord, Store

    store = Store(tmp_path / "experiments")
    for i in range(1, 121):
        store.record(RunRecord(name="many", source="x = 1", result=i, metrics=[("loss", 0, float(i), 0.0)],
                               started=1.7e9 + i))
    store.close()
    lab = start_lab(tmp_path, {"arrakis-jupyter:plugin": {"refreshInterval": 0, "pageSize": 50}})
    try:
        with chromium_page(1500, 1000) as page:
            errors = watch_errors(page)
            open_lab_home(page, lab)
            page.evaluate("() => window.jupyterapp.commands.execute('arrakis:open')")
            exp = page.locator(f"{SIDEBAR} .arrakis-exp-item[data-name='many']")
            exp.locator(".arrakis-exp-row").click()
            exp.locator(".arrakis-version-item[data-v='1']").click()
            detail = page.locator(f"{SIDEBAR} .arrakis-version-detail[data-v='1']")
            page.locator(f"{SIDEBAR} .arrakis-run-detail[data-run-id='120']").wait_for(timeout=10_000)  # the newest
            assert detail.locator(".arrakis-runs-section .arrakis-section-title").text_content() == "Runs (120)"
            rows = detail.locator(".arrakis-run-item")
            ids = lambda: [int(i) for i in rows.evaluate_all("rs => rs.map(r => r.dataset.runId)")]  # noqa: E731
            assert ids() == list(range(120, 70, -1))  # one page, newest first
            more = detail.locator(".arrakis-more")
            assert more.text_content() == "Show more (70 older)"
            more.click()
            page.wait_for_function("() => document.querySelectorAll('#arrakis-experiments .arrakis-run-item')"
                                   ".length === 100", timeout=10_000)
            assert ids() == list(range(120, 20, -1)) and more.text_content() == "Show more (20 older)"
            more.click()
            page.wait_for_function("() => document.querySelectorAll('#arrakis-experiments .arrakis-run-item')"
                                   ".length === 120", timeout=10_000)
            assert ids() == list(range(120, 0, -1)) and detail.locator(".arrakis-more").count() == 0
            rows.last.click()  # an older run's detail
            page.locator(f"{SIDEBAR} .arrakis-run-detail[data-run-id='1'] .arrakis-metrics").wait_for(timeout=10_000)
            page.screenshot(path=str(OUT / "11_show_more_runs.png"))
            assert not errors, errors
    finally:
        lab.stop()
