"""Open an HTML file in headless Chromium (Debian's ``chromium`` package): a screenshot and the console.

The report pages hold no scripts, so any console message at all (a blocked or failed load, a Content
Security Policy violation) is a problem; Chromium writes each as an ``INFO:CONSOLE`` line on stderr with
``--enable-logging=stderr --v=0``.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = Path("/usr/bin/chromium")
CONSOLE = re.compile(r":CONSOLE[:(]\d*\)?\]? ?(.*)")
SIZE = (1200, 1600)


def require_chromium() -> Path:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent: install Debian's chromium (apt-get install -y chromium)")
    return CHROMIUM


@dataclass
class Rendered:
    """A page as Chromium drew it: the screenshot as an [H, W, 3] uint8 array and the console messages."""

    pixels: np.ndarray
    console: list[str]

    def saturated_pixels(self) -> int:
        """Pixels with a clearly non-gray colour (the report's own style is grayscale: only plots have them)."""
        rgb = self.pixels.astype(np.int16)
        return int(((rgb.max(axis=2) - rgb.min(axis=2)) > 60).sum())


def render(html: Path, work: Path, size: tuple[int, int] = SIZE) -> Rendered:
    """Screenshot ``html`` at ``size`` (width, height) with a throwaway profile under ``work``."""
    from PIL import Image

    chromium = require_chromium()
    shot = work / f"{html.stem}.png"
    command = [
        str(chromium),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={work / 'chromium-profile'}",
        "--enable-logging=stderr",
        "--v=0",
        f"--screenshot={shot}",
        f"--window-size={size[0]},{size[1]}",
        html.resolve().as_uri(),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and shot.exists(), result.stderr[-2000:]
    console = [m.group(1) for line in result.stderr.splitlines() if (m := CONSOLE.search(line))]
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("RGB"))
    return Rendered(pixels, console)
