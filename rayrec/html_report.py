"""Reports people read: a Markdown report as one self-contained HTML page.

The A/B report (``rayrec ab``), the policy evaluation (``rayrec train-policy``) and the policy comparison
(``rayrec compare``) are written as Markdown with PNG plots beside them. :func:`write_html_report` writes
the same report as one HTML file next to the Markdown: the Markdown rendered by markdown-it-py
(CommonMark plus tables), every plot embedded as a base64 ``data:`` URI, the style inline. The page loads
nothing from anywhere (no scripts, fonts, style sheets or images by URL), so it can be mailed, attached
to a ticket or opened offline, and a Content-Security-Policy in the page itself enforces that.
"""

from __future__ import annotations

import base64
import html
import posixpath
from collections.abc import Sequence

from rayrec import storage
from rayrec.errors import ArtifactError

IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml"}
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
"""The page's own Content-Security-Policy: inline style and ``data:`` images only, nothing fetched."""
STYLE = """
body { font: 15px/1.5 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #1f2328;
       background: #ffffff; max-width: 1200px; margin: 2em auto; padding: 0 1.5em; }
h1, h2, h3 { border-bottom: 1px solid #d0d7de; padding-bottom: .3em; }
table { border-collapse: collapse; margin: 1em 0; display: block; overflow-x: auto; }
th, td { border: 1px solid #d0d7de; padding: 4px 10px; text-align: left; white-space: nowrap; }
th { background: #f6f8fa; }
tr:nth-child(even) td { background: #fbfcfd; }
code { background: #f6f8fa; padding: .1em .3em; border-radius: 4px; font-size: 90%; }
pre code { display: block; padding: .8em; overflow-x: auto; }
img { max-width: 100%; height: auto; border: 1px solid #d0d7de; margin: .5em 0; }
figure { margin: 1em 0; } figcaption { color: #57606a; font-size: 90%; }
"""


def _data_uri(path: str) -> str:
    """``data:`` URI of an image file (path or URI)."""
    kind = IMAGE_TYPES.get(posixpath.splitext(path)[1].lower())
    if kind is None:
        raise ArtifactError(f"{path}: not an image this report can embed ({', '.join(IMAGE_TYPES)})")
    if not storage.exists(path):
        raise ArtifactError(f"{path}: plot referenced by the report is missing")
    return f"data:{kind};base64,{base64.b64encode(storage.read_bytes(path)).decode('ascii')}"


def _is_local(src: str) -> bool:
    return "://" not in src and not src.startswith(("data:", "//", "/"))


def render_html(markdown: str, *, title: str, base_dir: str | None = None, plots: Sequence[str] = ()) -> str:
    """The report page.

    Args:
        markdown: the report's Markdown.
        title: the page title.
        base_dir: directory (path or URI) that relative image paths in ``markdown`` and ``plots`` are
            read from.
        plots: image files (relative to ``base_dir``) shown under "Plots" when the Markdown does not
            already show them.

    Raises:
        ArtifactError: a referenced image is missing or not an image; an image by URL (it would be
            fetched, and the page would not be self-contained).
    """
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    tokens = md.parse(markdown)
    shown: set[str] = set()
    for token in tokens:
        for child in token.children or ():
            if child.type != "image":
                continue
            src = str(child.attrGet("src") or "")
            if src.startswith("data:"):
                continue
            if not _is_local(src):
                raise ArtifactError(f"image {src!r}: a self-contained report embeds its plots, not URLs")
            shown.add(src)
            child.attrSet("src", _data_uri(_join(base_dir, src)))
    body = md.renderer.render(tokens, md.options, {})
    extra = [p for p in plots if p not in shown]
    if extra:
        body += "<h2>Plots</h2>\n" + "".join(
            f'<figure><img src="{_data_uri(_join(base_dir, p))}" alt="{html.escape(p)}">'
            f"<figcaption>{html.escape(p)}</figcaption></figure>\n"
            for p in extra
        )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n"
        f"<body>\n{body}</body>\n</html>\n"
    )


def _join(base_dir: str | None, path: str) -> str:
    return storage.join(base_dir, path) if base_dir else path


def write_html_report(markdown: str, html_uri: str, *, title: str, plots: Sequence[str] = ()) -> str:
    """Write :func:`render_html` of ``markdown`` to ``html_uri``; images are read relative to its directory.
    Returns ``html_uri``."""
    base = posixpath.dirname(str(html_uri)) or "."
    storage.write_text(html_uri, render_html(markdown, title=title, base_dir=base, plots=plots))
    return str(html_uri)
