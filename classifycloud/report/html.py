"""The standalone HTML report: tables and base64-embedded PNGs in one file."""
from __future__ import annotations

import base64
import html
import os

from classifycloud.report.tables import Table

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em;color:#222;max-width:1200px}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0}td,th{padding:.25em .7em;border:1px solid #ddd;text-align:right}
td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}.note{color:#666;font-size:.9em}
img{max-width:100%;border:1px solid #eee;margin:.5em 0}.warn{color:#a60}
"""


def _table(t: Table) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in t.header)
    if t.rows:
        body = "".join("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in r) + "</tr>" for r in t.rows)
    else:
        body = f'<tr><td colspan="{len(t.header)}">no data</td></tr>'
    note = f'<p class="note">{esc(t.note)}</p>' if t.note else ""
    return f"<h2>{esc(t.title)}</h2><table><tr>{head}</tr>{body}</table>{note}"


def _image(path: str, caption: str) -> str:
    with open(path, "rb") as fh:
        data = base64.b64encode(fh.read()).decode("ascii")
    alt = html.escape(caption)
    return f'<h2>{alt}</h2><img alt="{alt}" src="data:image/png;base64,{data}">'


def render(title: str, facts: list[tuple[str, str]], tables: list[Table], images: list[tuple[str, str]],
           problems: list[str]) -> str:
    """The whole report as one HTML document (no external files)."""
    esc = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{esc(title)}</h1><table>"]
    parts += [f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in facts]
    parts.append("</table>")
    if problems:
        parts.append("<h2 class='warn'>Problems</h2><ul>"
                     + "".join(f"<li class='warn'>{esc(p)}</li>" for p in problems[:50]) + "</ul>")
    parts += [_table(t) for t in tables]
    parts += [_image(path, caption) for path, caption in images if os.path.exists(path)]
    parts.append("</body></html>")
    return "\n".join(parts)


def write(path: str, document: str) -> str:
    """Write the report; returns its path."""
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(document)
    return path
