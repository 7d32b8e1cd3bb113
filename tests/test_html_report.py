"""Reports people read: self-contained HTML pages (rayrec/html_report.py), opened in headless Chromium."""

from __future__ import annotations

import base64
import re

import pytest
from _chromium import render, require_chromium

from rayrec.cli import main
from rayrec.errors import ArtifactError
from rayrec.html_report import render_html, write_html_report

SMALL_AB = ["--env", "num_items=1500", "--no-progress", "--users-per-task", "400", "--resamples", "200"]


def _plot(path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot([0, 1, 2], [1, 3, 2])
    fig.savefig(path)
    plt.close(fig)


def test_plots_are_embedded_and_nothing_is_fetched(tmp_path):
    _plot(tmp_path / "a.png")
    _plot(tmp_path / "b.png")
    markdown = (
        "# Report\n\n| arm | mean |\n| --- | --- |\n| A | 1.5 |\n\n![a](a.png)\n\n<script>x()</script>\n"
    )
    page = render_html(markdown, title="t <&>", base_dir=str(tmp_path), plots=["a.png", "b.png"])
    images = re.findall(r'<img src="([^"]+)"', page)
    assert len(images) == 2, "a.png once (the Markdown shows it), b.png under Plots"
    assert all(src.startswith("data:image/png;base64,") for src in images)
    assert base64.b64decode(images[0].split(",", 1)[1]) == (tmp_path / "a.png").read_bytes()
    assert "<table>" in page and "<td>1.5</td>" in page
    assert "<script>" not in page, "raw HTML in the Markdown is escaped"
    assert "<title>t &lt;&amp;&gt;</title>" in page
    assert not re.search(r"(src|href)=\"(https?:)?//", page)


def test_an_image_by_url_or_a_missing_plot_is_a_clear_error(tmp_path):
    with pytest.raises(ArtifactError, match="embeds its plots, not URLs"):
        render_html("![x](https://example.com/x.png)\n", title="t", base_dir=str(tmp_path))
    with pytest.raises(ArtifactError, match=r"gone\.png: plot referenced by the report is missing"):
        render_html("![x](gone.png)\n", title="t", base_dir=str(tmp_path))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ArtifactError, match="not an image"):
        render_html("# t\n", title="t", base_dir=str(tmp_path), plots=["notes.txt"])


def test_the_console_check_catches_a_page_that_fetches(tmp_path):
    """The check below can fail: a page that loads an image by URL logs the refusal on the console."""
    require_chromium()
    _plot(tmp_path / "a.png")
    page = tmp_path / "report.html"
    write_html_report("# ok\n\n![a](a.png)\n", str(page), title="t")
    bad = tmp_path / "bad.html"
    bad.write_text(page.read_text().replace("</body>", '<img src="https://example.com/x.png"></body>'))
    rendered = render(bad, tmp_path)
    assert rendered.console and "example.com" in " ".join(rendered.console)


def test_ab_report_html_renders_in_chromium(ray_session, tmp_path):
    require_chromium()
    out = tmp_path / "ab"
    argv = ["ab", "--arm", "A=random", "--arm", "B=greedy", "--users", "400", "--out", str(out), *SMALL_AB]
    assert main(argv) == 0
    page = out / "report.html"
    text = page.read_text()
    assert text.count("data:image/png;base64,") == 2, "both plots embedded"
    assert "Comparisons" in text and "session_return" in text  # the Markdown report's sections
    rendered = render(page, tmp_path)
    assert rendered.console == [], rendered.console
    assert rendered.pixels.std() > 20, "a blank page"
    assert rendered.saturated_pixels() > 500, "the plots are drawn"
