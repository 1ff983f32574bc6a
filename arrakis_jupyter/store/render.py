"""HTML views of versions and diffs for notebooks (plain text views are their ``__str__``)."""
from __future__ import annotations

import html
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .records import Version, VersionDiff

_STYLE = ("<style>.arrakis-src{font-family:var(--jp-code-font-family,monospace);font-size:12px;white-space:pre;"
          "padding:6px;border:1px solid var(--jp-border-color2,#ddd);overflow:auto}"
          ".arrakis-add{background:rgba(46,160,67,.18)}.arrakis-del{background:rgba(248,81,73,.18)}"
          ".arrakis-hunk{color:#6f42c1}</style>")


def highlight(source: str) -> str:
    """Python source as highlighted HTML (pygments, which IPython ships)."""
    try:
        from pygments import highlight as pyg
        from pygments.formatters import HtmlFormatter
        from pygments.lexers import PythonLexer

        return pyg(source, PythonLexer(), HtmlFormatter(noclasses=True, nowrap=True))
    except ImportError:
        return html.escape(source)


def version_html(v: "Version") -> str:
    runs = v.runs.to_html(index=False) if len(v.runs) else "<p>no runs</p>"
    return (f"{_STYLE}<h4>{html.escape(v.name)} v{v.index} <code>{v.hash}</code> <small>({v.kind}, first seen "
            f"{v.first_seen:%Y-%m-%d %H:%M:%S} UTC)</small></h4><div class='arrakis-src'>{highlight(v.source)}</div>"
            f"{runs}")


def diff_lines_html(diff: str) -> str:
    out = []
    for line in diff.splitlines():
        cls = ("arrakis-hunk" if line.startswith("@@") else "arrakis-add" if line.startswith("+")
               else "arrakis-del" if line.startswith("-") else "")
        out.append(f"<div class='{cls}'>{html.escape(line) or '&nbsp;'}</div>")
    return "".join(out)


def diff_html(d: "VersionDiff") -> str:
    source = (f"<div class='arrakis-src'>{diff_lines_html(d.source_diff)}</div>" if d.source_diff
              else "<p>The sources are identical up to whitespace.</p>")
    parts = [_STYLE, f"<h4>{html.escape(d.name)}: <code>{d.a}</code> → <code>{d.b}</code></h4>", source]
    if len(d.results):
        parts += ["<h5>Results (last successful run of each)</h5>", d.results.to_html(index=False)]
    if len(d.metrics):
        parts += ["<h5>Metrics (last run of each)</h5>", d.metrics.to_html()]
    return "".join(parts)
