"""Building blocks of the self-contained report pages: escaped tables, sections, embedded
figures, one stylesheet, no network. On load, the page's body records how many of its images
the browser decoded (`data-images`, `data-images-decoded`), for people and for the render test.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence

STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1200px; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 1.8em;
     border-bottom: 1px solid #ddd; } h3 { font-size: 1.05em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.paper { background: #fff8e6; } .note { background: #eef5ff; border-left: 4px solid #4a7fd6;
       padding: 0.5em 0.8em; } .warn { background: #fff1f0; border-left: 4px solid #d62728;
       padding: 0.5em 0.8em; } figure { margin: 1em 0; } figcaption { font-size: 0.85em;
       color: #555; } img { max-width: 100%; } code { background: #f5f5f5; padding: 0 3px; }
.scroll { overflow-x: auto; }
"""

DECODE_CHECK = (
    "<script>window.addEventListener('load', function () {"
    " var imgs = Array.prototype.slice.call(document.images);"
    " document.body.setAttribute('data-images', imgs.length);"
    " document.body.setAttribute('data-images-decoded', imgs.filter(function (i) {"
    " return i.complete && i.naturalWidth > 0; }).length); });</script>"
)


def esc(text: object) -> str:
    """HTML-escaped text."""
    return html.escape(str(text))


def page(title: str, body: Iterable[str]) -> str:
    """A whole HTML page with the stylesheet inline."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{esc(title)}</title><style>{STYLE}</style></head>\n<body>\n"
        + "\n".join(body)
        + f"\n{DECODE_CHECK}\n</body></html>\n"
    )


def section(title: str, *parts: str) -> str:
    """An <h2> section of the given HTML parts."""
    return f"<section><h2>{esc(title)}</h2>\n" + "\n".join(parts) + "\n</section>"


def para(text: str, cls: str = "") -> str:
    """A paragraph of escaped text."""
    attr = f' class="{cls}"' if cls else ""
    return f"<p{attr}>{esc(text)}</p>"


def bullets(items: Iterable[str]) -> str:
    """An unordered list of escaped items."""
    return "<ul>" + "".join(f"<li>{esc(item)}</li>" for item in items) + "</ul>"


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[object]],
    numeric_from: int = 1,
    paper_columns: Iterable[int] = (),
    paper_rows: Iterable[int] = (),
) -> str:
    """A table of escaped cells; columns from `numeric_from` on are right-aligned, the cells of
    `paper_columns` and `paper_rows` shaded as the paper's numbers."""
    paper, paper_r = set(paper_columns), set(paper_rows)
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        cells = []
        for j, cell in enumerate(row):
            shaded = j in paper or (i in paper_r and j > 0)
            classes = (["num"] if j >= numeric_from else []) + (["paper"] if shaded else [])
            attr = f' class="{" ".join(classes)}"' if classes else ""
            cells.append(f"<td{attr}>{esc(cell)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<div class="scroll"><table><tr>{head}</tr>\n' + "\n".join(body) + "</table></div>"


def figure(data_uri: str, caption: str) -> str:
    """An embedded image (a data URI) with its caption."""
    return (
        f'<figure><img src="{data_uri}" alt="{esc(caption)}">'
        f"<figcaption>{esc(caption)}</figcaption></figure>"
    )


def link(href: str, text: str) -> str:
    """A relative link."""
    return f'<a href="{esc(href)}">{esc(text)}</a>'


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """The same table in Markdown (pipes in cells escaped)."""

    def cell(value: object) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in headers) + " |", "|---" * len(headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def transpose(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> tuple[list, list]:
    """The table turned: its first column becomes the header row.

    >>> transpose(["arm", "acc"], [["a", "1"], ["b", "2"]])
    (['arm', 'a', 'b'], [['acc', '1', '2']])
    """
    new_headers = [headers[0], *(row[0] for row in rows)]
    new_rows = [[headers[j], *(row[j] for row in rows)] for j in range(1, len(headers))]
    return new_headers, new_rows
