#!/usr/bin/env python3
"""Make the README's pictures from the demo's real photos (``make docs``): nothing else writes into docs/.

    python docs/make_pictures.py [--photos demo/photos] [--chromium /usr/bin/chromium]

* ``docs/blurmap_example.png``: the blur maps of one photo sharp and defocused, side by side (``scan --save-maps``).
* ``docs/review.png``: the review page over the demo folder in headless chromium (Playwright), the blurriest photo
  selected.
* ``docs/blur_kind_angles.png``: the convention of ``motion_angle``, a photo streaked at 0, 45, 90 and 135 degrees.

The demo folder is built first when missing (``python -m ensemble.demo``). The tests never write here.
"""
from __future__ import annotations

import argparse
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
VIEWPORT = {"width": 1400, "height": 900}
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
PAIR = ("coffee_sharp", "coffee_defocus")  # the photo shown sharp and blurred in the blur-map example


def blur_cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ensemble", *args], check=True, cwd=REPO, **kw)


def blur_maps(photos: Path) -> Path:
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        blur_cli("scan", *(str(photos / f"{name}.jpg") for name in PAIR), "--save-maps", tmp, "--quiet",
                 stdout=subprocess.DEVNULL)
        maps = [Image.open(Path(tmp) / f"{name}.blurmap.png").convert("RGB") for name in PAIR]
        gap = 12
        out = Image.new("RGB", (sum(m.width for m in maps) + gap, max(m.height for m in maps)), "white")
        out.paste(maps[0], (0, 0))
        out.paste(maps[1], (maps[0].width + gap, 0))
    path = DOCS / "blurmap_example.png"
    out.save(path, optimize=True)
    return path


def review_screenshot(photos: Path, chromium: str) -> Path:
    from playwright.sync_api import sync_playwright

    token = secrets.token_urlsafe(24)
    with tempfile.TemporaryDirectory() as tmp:
        log_path = Path(tmp) / "serve.log"
        env = dict(os.environ, BLUR_DETECT_TOKEN=token, XDG_DATA_HOME=str(Path(tmp) / "xdg"))
        with open(log_path, "w") as log:
            server = subprocess.Popen([sys.executable, "-m", "ensemble", "serve", "--root", str(photos), "--port", "0",
                                       "--models-dir", str(Path(tmp) / "models"), "--log-level", "warning"],
                                      cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            url, end = None, time.monotonic() + 90
            while url is None and time.monotonic() < end and server.poll() is None:
                m = re.search(r"listening on (http://\S+/)", log_path.read_text())
                if m:
                    url = m.group(1)
                else:
                    time.sleep(0.1)
            if url is None:
                raise SystemExit(f"error: blur-detect serve did not start:\n{log_path.read_text()}")
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport=VIEWPORT)
                page.set_default_timeout(120_000)
                page.goto(f"{url}?token={token}")
                page.wait_for_selector("body[data-phase=idle]")
                page.keyboard.press("ArrowRight")  # selects the first (blurriest) photo
                page.mouse.move(5, VIEWPORT["height"] - 5)
                end = time.monotonic() + 60
                while time.monotonic() < end and not page.evaluate(
                        "() => [...document.querySelectorAll('.tile img.thumb[src]')]"
                        ".every(i => i.complete && i.naturalWidth > 0)"):
                    page.wait_for_timeout(100)
                page.wait_for_timeout(400)  # let the fade-ins finish
                path = DOCS / "review.png"
                page.screenshot(path=str(path))
                browser.close()
        finally:
            server.terminate()
            server.wait(15)
    return path


def angle_picture(photos: Path) -> Path:
    """The motion_angle convention: one demo photo (or a synthetic one) streaked at four screen angles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from PIL import Image

    from ensemble.augment import apply_blur
    from ensemble.blur_kind import screen_angle

    sources = sorted(photos.glob(f"{PAIR[0]}.*"))
    grey = np.asarray(Image.open(sources[0]).convert("L")) if sources else np.tile(np.arange(256, dtype=np.uint8),
                                                                                      (192, 1))
    h, w = grey.shape
    side = min(h, w)
    crop = np.asarray(Image.fromarray(grey[(h - side) // 2:][:side, (w - side) // 2:][:, :side]).resize((240, 240)))
    fig, axes = plt.subplots(1, 4, figsize=(10, 2.9))
    for ax, angle in zip(axes, (0, 45, 90, 135)):
        kernel_angle = -angle % 180  # augment.motion_kernel measures clockwise; screen_angle turns it round
        assert screen_angle(kernel_angle) == angle
        ax.imshow(apply_blur(crop, "motion", 24, kernel_angle), cmap="gray", vmin=0, vmax=255)
        rad = np.deg2rad(angle)
        dx, dy = 70 * np.cos(rad), -70 * np.sin(rad)  # screen y runs down
        ax.annotate("", xy=(120 + dx, 120 + dy), xytext=(120 - dx, 120 - dy),
                    arrowprops={"arrowstyle": "<->", "color": "#f05d55", "lw": 2.5})
        ax.set_title(f"motion_angle {angle}°")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("Counter-clockwise from horizontal, as seen on screen; a streak has no head or tail (0–180°)")
    fig.tight_layout()
    out = DOCS / "blur_kind_angles.png"
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--photos", default=str(REPO / "demo" / "photos"), help="the demo folder (built when missing)")
    p.add_argument("--chromium", default=os.environ.get("BLUR_CHROMIUM", "/usr/bin/chromium"),
                   help="chromium executable (make browser installs Debian's)")
    a = p.parse_args(argv)
    photos = Path(a.photos)
    if not photos.is_dir():
        subprocess.run([sys.executable, "-m", "ensemble.demo", str(photos)], check=True, cwd=REPO)
    print(f"wrote {blur_maps(photos).relative_to(REPO)}")
    print(f"wrote {angle_picture(photos).relative_to(REPO)}")
    if not Path(a.chromium).exists():
        print(f"error: chromium not found at {a.chromium}: run 'make browser' or pass --chromium", file=sys.stderr)
        return 1
    print(f"wrote {review_screenshot(photos, a.chromium).relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
