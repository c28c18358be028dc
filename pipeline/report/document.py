"""The report as a list of blocks, rendered once as Markdown and once as self-contained HTML.

The HTML embeds every figure as a data URI, so it opens from disk with everything showing.
"""

from __future__ import annotations

import base64
import html
import inspect
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd


@dataclass
class Block:
    kind: str  # h1, h2, p, ul, table, code, figure
    text: str = ""
    items: list[str] = field(default_factory=list)
    table: pd.DataFrame | None = None
    path: Path | None = None  # a figure, relative to the report folder


def question_blocks(question: str) -> tuple[str, list[Block]]:
    """A variant's docstring: its first line (the title), then the rest as paragraphs and bullet lists.

    A line that starts with "* " or "- " opens a list item; the indented lines after it continue it."""
    lines = inspect.cleandoc(question).splitlines() or [""]
    blocks: list[Block] = []
    for line in lines[1:]:
        text = line.strip()
        if not text:
            blocks.append(Block("p"))  # a paragraph break; empty blocks are dropped below
        elif text[:2] in ("* ", "- "):
            if not blocks or blocks[-1].kind != "ul":
                blocks.append(Block("ul"))
            blocks[-1].items.append(text[2:])
        elif blocks and blocks[-1].kind == "ul" and line[:1].isspace():
            blocks[-1].items[-1] += " " + text
        elif blocks and blocks[-1].kind == "p":
            blocks[-1].text = f"{blocks[-1].text} {text}".strip()
        else:
            blocks.append(Block("p", text))
    return lines[0].strip(), [b for b in blocks if b.text or b.items]


def _md_cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _md_table(table: pd.DataFrame) -> str:
    head = "| " + " | ".join(_md_cell(c) for c in table.columns) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    rows = ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([head, rule, *rows])


def to_markdown(blocks: list[Block]) -> str:
    parts = []
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            parts.append("#" * int(b.kind[1]) + " " + b.text)
        elif b.kind == "p":
            parts.append(b.text)
        elif b.kind == "ul":
            parts.append("\n".join(f"- {item}" for item in b.items))
        elif b.kind == "table":
            parts.append(_md_table(b.table))
        elif b.kind == "code":
            parts.append(f"```bash\n{b.text}\n```")
        elif b.kind == "figure":
            parts.append(f"![{b.text}]({b.path.as_posix()})\n\n*{b.text}*")
    return "\n\n".join(parts) + "\n"


def _inline_html(text: str) -> str:
    """Escape, then the three Markdown marks the report uses: `code`, **bold** and [text](relative link)."""
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text, quote=False))
    out = re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)", r'<a href="\2">\1</a>', out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)


def _html_figure(b: Block, folder: Path) -> str:
    data = base64.b64encode((folder / b.path).read_bytes()).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(b.text)}">'
            f"<figcaption>{_inline_html(b.text)}</figcaption></figure>")


# a number or signed delta (with an optional ± half-width), a [lo, hi] interval, or n/a
NUMERIC = re.compile(r"^([-+]?\d+(\.\d+)?( ± \d+(\.\d+)? \(n=\d+\))?|\[[-+\d., ]+\]|n/a)$")


def _html_table(table: pd.DataFrame) -> str:
    """Numbers right-aligned, text left-aligned; cells take the same inline marks as paragraphs (a link, say)."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
    rows = "".join("<tr>" + "".join(f'<td class="{"num" if NUMERIC.match(str(v)) else "text"}">'
                                    f"{_inline_html(str(v))}</td>" for v in row) + "</tr>"
                   for row in table.itertuples(index=False))
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>'


def _html_block(b: Block, folder: Path) -> str:
    if b.kind in ("h1", "h2", "h3"):
        return f"<{b.kind}>{_inline_html(b.text)}</{b.kind}>"
    if b.kind == "p":
        return f"<p>{_inline_html(b.text)}</p>"
    if b.kind == "ul":
        return "<ul>" + "".join(f"<li>{_inline_html(i)}</li>" for i in b.items) + "</ul>"
    if b.kind == "table":
        return _html_table(b.table)
    if b.kind == "code":
        return f"<pre><code>{html.escape(b.text)}</code></pre>"
    return _html_figure(b, folder)


CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; border-bottom: 2px solid #ddd; padding-bottom: .3em; }
h2 { font-size: 1.3em; margin-top: 1.8em; border-bottom: 1px solid #eee; }
h3 { font-size: 1.05em; margin-top: 1.4em; }
table { border-collapse: collapse; font-size: .85em; margin: .8em 0; }
th, td { border: 1px solid #ddd; padding: .3em .6em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; white-space: nowrap; }
.scroll { overflow-x: auto; }
pre { background: #f6f8fa; padding: .8em; overflow-x: auto; }
code { font-size: .9em; } figure { margin: 1em 0; } img { max-width: 100%; height: auto; }
figcaption { color: #555; font-size: .9em; }
"""


def to_html(blocks: list[Block], folder: Path, title: str) -> str:
    body = "\n".join(_html_block(b, folder) for b in blocks)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<link rel="icon" href="data:,"><title>{html.escape(title)}</title><style>{CSS}</style></head>\n'
            f"<body>\n{body}\n</body></html>\n")


def write_documents(folder: Path, blocks: list[Block], title: str) -> None:
    (folder / "report.md").write_text(to_markdown(blocks), encoding="utf-8")
    (folder / "report.html").write_text(to_html(blocks, folder, title), encoding="utf-8")
