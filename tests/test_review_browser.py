"""The review page in a real browser: Playwright drives Debian's chromium (headless) against ``blur-detect serve``.

The server runs as a subprocess over a generated folder, with a token, as a user would start it; the page gets its
cookie from the ``?token=`` address. The test waits for the scan, overrides two photos with the keyboard, applies,
checks on disk that exactly the rejected files moved, undoes, checks by SHA-256 that every file is back, and checks
that a screenshot of the page is a real picture. It writes only to temporary folders: ``make docs`` makes the
README's screenshot (``docs/review.png``) on purpose, from the demo's photos.

Chromium comes from ``$BLUR_CHROMIUM`` (default ``/usr/bin/chromium``; ``make browser`` installs Debian's). Without
it the test is skipped with the reason, except under CI (``CI`` set), where that is a failure.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fixtures import REPO_ROOT, blur, make_photo, model_with_kind_head, save_jpeg

CHROMIUM = os.environ.get("BLUR_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
VIEWPORT = {"width": 1400, "height": 900}
TIMEOUT_MS = 90_000  # a hang fails; a slow shared machine does not

# (name, seed, blur kind, amount): sharp photos, clearly blurred ones, and a few near the threshold (amber).
PHOTOS = [
    ("IMG_0401.jpg", 1, None, 0), ("IMG_0402.jpg", 1, "gaussian", 3.0), ("IMG_0403.jpg", 2, None, 0),
    ("IMG_0404.jpg", 3, "motion", 12.0), ("IMG_0405.jpg", 11, "defocus", 1.5), ("IMG_0406.jpg", 4, None, 0),
    ("IMG_0407.jpg", 5, "defocus", 4.0), ("IMG_0408.jpg", 15, "defocus", 1.7), ("IMG_0409.jpg", 6, None, 0),
    ("beach/IMG_0410.jpg", 7, None, 0), ("beach/IMG_0411.jpg", 8, "gaussian", 2.0), ("beach/IMG_0412.jpg", 9, None, 0),
    ("beach/IMG_0413.jpg", 10, None, 0),
]
TRICKY = 'x<img src=x onerror="window.__pwned=1">.jpg'  # a file name that must stay text


def _need(condition: bool, reason: str) -> None:
    if not condition:
        if os.environ.get("CI"):
            pytest.fail(f"browser test cannot run in CI: {reason}")
        pytest.skip(reason)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _photos_on_disk(root: Path) -> dict[str, str]:
    """Path below root -> SHA-256, for every file but the review's own (cache, state) and the apply journals."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and not rel.startswith((".blur-review", ".blur-review-state")) and \
                ".blur-detect-journal-" not in rel:
            out[rel] = _sha(p)
    return out


@pytest.fixture
def folder(tmp_path) -> Path:
    root = tmp_path / "Pictures" / "holiday"
    for name, seed, kind, amount in PHOTOS:
        img = make_photo(seed, (480, 640))
        save_jpeg(root / name, img if kind is None else blur(img, kind, amount, angle=20.0))
    save_jpeg(root / TRICKY, make_photo(12, (480, 640)))
    (root / "IMG_0414.jpg").write_bytes(b"\xff\xd8\xff\xe0 the card was pulled out mid-write")
    return root


@pytest.fixture
def server_env(request, tmp_path) -> dict:
    """Extra environment of the server: ``kind-head`` (by indirect parametrisation) serves the shipped model with
    a stand-in kind head that calls every blur defocus, 7 px."""
    if getattr(request, "param", None) != "kind-head":
        return {}
    return {"BLUR_ENSEMBLE_MODELS": str(model_with_kind_head(tmp_path / "kind-model", p_motion=0.2, extent=7.0))}


@pytest.fixture
def server(folder, tmp_path, server_env):
    """``blur-detect serve --root FOLDER --port 0`` with a token; yields (base URL, token)."""
    token = secrets.token_urlsafe(24)
    log_path = tmp_path / "serve.log"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), BLUR_DETECT_TOKEN=token, XDG_DATA_HOME=str(tmp_path / "xdg"),
               **server_env)
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "ensemble", "serve", "--root", str(folder), "--port", "0",
                                 "--models-dir", str(tmp_path / "models"), "--log-level", "warning"],
                                stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        url, end = None, time.monotonic() + 90
        while url is None and time.monotonic() < end:
            m = re.search(r"listening on (http://\S+/)", log_path.read_text())
            if m:
                url = m.group(1)
            elif proc.poll() is not None:
                pytest.fail(f"blur-detect serve exited with {proc.returncode}:\n{log_path.read_text()}")
            else:
                time.sleep(0.1)
        assert url, f"blur-detect serve did not start:\n{log_path.read_text()}"
        yield url, token
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    log_text = log_path.read_text()
    assert "Traceback" not in log_text, log_text


def _select(page, target: str) -> None:
    """Move the selection to ``target`` with the arrow keys only."""
    paths = page.eval_on_selector_all(".tile", "els => els.map(e => e.dataset.path)")
    cols = page.evaluate("getComputedStyle(document.getElementById('grid')).gridTemplateColumns.split(' ').length")
    current = page.eval_on_selector(".tile.selected", "e => e.dataset.path") if page.query_selector(
        ".tile.selected") else None
    if current is None:
        page.keyboard.press("ArrowRight")  # the first arrow press selects the first photo
        current = paths[0]
    delta = paths.index(target) - paths.index(current)
    rows = int(delta / cols)  # whole rows first (towards zero), then the rest along the row
    rest = delta - rows * cols
    for _ in range(abs(rows)):
        page.keyboard.press("ArrowDown" if rows > 0 else "ArrowUp")
    for _ in range(abs(rest)):
        page.keyboard.press("ArrowRight" if rest > 0 else "ArrowLeft")
    assert page.eval_on_selector(".tile.selected", "e => e.dataset.path") == target


def _until(page, script: str, arg=None) -> None:
    """Poll the JavaScript function ``script`` until it returns true. (Playwright's wait_for_function compiles its
    predicate with eval, which the page's Content-Security-Policy rightly forbids.)"""
    end = time.monotonic() + TIMEOUT_MS / 1000
    while not page.evaluate(script, arg):
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {script} ({arg!r})")
        page.wait_for_timeout(50)


def _wait_tile(page, path: str, css_class: str) -> None:
    """Wait until the tile of ``path`` has ``css_class`` (paths are compared as data, never put in a selector)."""
    _until(page, "([p, c]) => [...document.querySelectorAll('.tile')]"
                 ".some(e => e.dataset.path === p && e.classList.contains(c))", [path, css_class])


def _wait_tiles(page, n: int) -> None:
    _until(page, "n => document.querySelectorAll('.tile').length === n", n)


def _playwright():
    """Playwright's sync API, or skip (fail under CI) when chromium or the package is missing."""
    _need(Path(CHROMIUM).exists(), f"chromium not found at {CHROMIUM} (run 'make browser' or set BLUR_CHROMIUM)")
    try:
        from playwright import sync_api
    except ImportError:
        sync_api = None
    _need(sync_api is not None, "the playwright package is not installed (pip install playwright)")
    return sync_api


def _new_page(browser, problems: list[str]):
    """A page of the test's size and timeout whose errors, console errors and dialogs land in ``problems``."""
    page = browser.new_page(viewport=VIEWPORT)
    page.set_default_timeout(TIMEOUT_MS)
    page.on("pageerror", lambda err: problems.append(f"page error: {err}"))
    page.on("console", lambda msg: problems.append(f"console: {msg.text}") if msg.type == "error" else None)
    page.on("dialog", lambda dialog: (problems.append(f"dialog: {dialog.message}"), dialog.dismiss()))
    return page


@contextlib.contextmanager
def _browser_page():
    """(page, problems) in a fresh headless chromium; fails the test afterwards if the page had problems."""
    sync_api = _playwright()
    problems: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield _new_page(browser, problems), problems
        finally:
            browser.close()
    assert not problems, problems


def test_review_page_override_apply_undo(folder, server, tmp_path):
    from PIL import Image

    url, token = server
    before = _photos_on_disk(folder)
    n_photos = len(before)
    with _browser_page() as (page, problems):

        # The token in the address becomes a cookie; the address bar then drops it.
        page.goto(f"{url}?token={token}")
        assert "token=" not in page.url
        page.wait_for_selector("body[data-phase=idle]")
        _wait_tiles(page, n_photos)
        assert re.search(rf"{n_photos} photos scored", page.inner_text("#progress-text"))

        data = page.request.get(f"{url}api/review/results").json()
        t, band = data["status"]["threshold"], data["status"]["band"]
        scored = {i["path"]: i["p"] for i in data["items"] if i["p"] is not None}
        order = page.eval_on_selector_all(".tile", "els => els.map(e => e.dataset.path)")
        assert order[:len(scored)] == sorted(scored, key=lambda k: (-scored[k], k))  # blurriest first
        _wait_tile(page, "IMG_0414.jpg", "v-error")  # the unreadable file is an error tile
        blurry = sorted(k for k, p in scored.items() if p >= t + band)
        sharp = sorted(k for k, p in scored.items() if p <= t - band)
        assert len(blurry) >= 3 and len(sharp) >= 3, scored  # the fixture photos do what they should

        # Keyboard overrides: reject a sharp photo, keep a blurry one.
        to_reject, to_keep = sharp[0], blurry[0]
        _select(page, to_reject)
        page.keyboard.press("r")
        _select(page, to_keep)
        page.keyboard.press("k")
        _wait_tile(page, to_reject, "o-reject")
        _wait_tile(page, to_keep, "o-keep")

        # The choices are on the server: a reload shows them again.
        end = time.monotonic() + TIMEOUT_MS / 1000
        while time.monotonic() < end:
            saved = {i["path"]: i["o"] for i in page.request.get(f"{url}api/review/results").json()["items"]}
            if saved[to_reject] == "reject" and saved[to_keep] == "keep":
                break
            time.sleep(0.05)
        assert not page.query_selector(".toast.bad")
        page.reload()
        page.wait_for_selector("body[data-phase=idle]")
        _wait_tile(page, to_reject, "o-reject")
        _wait_tile(page, to_keep, "o-keep")
        assert page.evaluate("window.__pwned") is None and not page.query_selector('img[src="x"]')
        names = page.eval_on_selector_all(".tile .name", "els => els.map(e => e.textContent)")
        assert TRICKY in names  # shown as text, not parsed as markup

        # A screenshot of the grid with both badges, a selection and its tools.
        _select(page, to_reject)
        page.mouse.move(5, VIEWPORT["height"] - 5)
        _until(page, "() => [...document.querySelectorAll('.tile img.thumb[src]')]"
                     ".every(i => i.complete && i.naturalWidth > 0)")
        page.wait_for_timeout(400)  # let the fade-ins finish
        shot = page.screenshot()

        expected = sorted((set(blurry) - {to_keep}) | {to_reject})
        assert page.inner_text("#apply") == f"Apply ({len(expected)})…"

        # A dialog keeps keyboard focus inside while it is open and hands it back when it closes.
        inside = "id => document.getElementById(id).contains(document.activeElement)"
        page.click("#apply")
        page.wait_for_selector("#plan:not([hidden]) .plan-list")
        for key in ["Tab"] * 4 + ["Shift+Tab"] * 5:
            page.keyboard.press(key)
            assert page.evaluate(inside, "plan"), f"{key} left the plan dialog"
        page.keyboard.press("Escape")
        page.wait_for_selector("#plan", state="hidden")
        assert page.evaluate("() => document.activeElement.id") == "apply"
        page.keyboard.press("?")
        page.wait_for_selector("#help", state="visible")
        for key in ("Tab", "Shift+Tab"):
            page.keyboard.press(key)
            assert page.evaluate(inside, "help"), f"{key} left the help dialog"
        page.keyboard.press("Escape")
        page.wait_for_selector("#help", state="hidden")

        # Apply shows the plan first, then moves exactly those files.
        page.keyboard.press("a")
        page.wait_for_selector("#plan:not([hidden]) .plan-list")
        planned = page.eval_on_selector_all("#plan .plan-list .path", "els => els.map(e => e.textContent)")
        assert sorted(planned) == expected
        page.click("#plan-confirm")
        _until(page, "t => document.getElementById('plan-title').textContent.startsWith(t)",
               f"Moved {len(expected)} photo")
        page.wait_for_selector("#plan-progress", state="hidden")  # the count is over once the report shows
        after = _photos_on_disk(folder)
        moved = {k[len("_blurry/"):]: v for k, v in after.items() if k.startswith("_blurry/")}
        assert sorted(moved) == expected
        assert {k: v for k, v in after.items() if not k.startswith("_blurry/")} == \
            {k: v for k, v in before.items() if k not in expected}
        assert all(moved[k] == before[k] for k in expected)
        _wait_tiles(page, n_photos - len(expected))

        # Undo puts every file back, byte for byte, and the grid fills again.
        page.click("#plan-cancel")
        page.click("#undo")
        page.wait_for_selector(".toast.good")
        assert _photos_on_disk(folder) == before
        assert not [p for p in (folder / "_blurry").rglob("*") if p.is_file() and not p.name.endswith(".undone")]
        _wait_tiles(page, n_photos)
        page.wait_for_selector("#undo[disabled]")

    image = Image.open(io.BytesIO(shot))
    assert image.format == "PNG" and image.size == (VIEWPORT["width"], VIEWPORT["height"])
    assert len(set(image.convert("L").resize((64, 64)).getdata())) > 50  # not a blank page


@pytest.mark.parametrize("server_env", ["kind-head"], indirect=True)
def test_review_page_kind_badges_and_chips(folder, server):
    """With a kind head, the photos that look blurry (or uncertain) carry a kind badge, and the kind chips count
    and show exactly them. The stand-in head calls every blur defocus, so Motion stays empty."""
    url, token = server
    with _browser_page() as (page, problems):
        page.goto(f"{url}?token={token}")
        page.wait_for_selector("body[data-phase=idle]")
        _wait_tiles(page, len(_photos_on_disk(folder)))
        data = page.request.get(f"{url}api/review/results").json()
        t, band = data["status"]["threshold"], data["status"]["band"]
        items = [i for i in data["items"] if i["p"] is not None]
        assert all(i["kind"] == "defocus" and i["ext"] == 7.0 and i["noise"] is not None for i in items)
        soft = sorted(i["path"] for i in items if i["p"] > t - band)  # blurry or uncertain
        assert soft and len(soft) < len(items)
        badges = page.eval_on_selector_all(
            ".tile", "els => els.map(e => [e.dataset.path, e.querySelector('.kind-badge').hidden ? null : "
                     "e.querySelector('.kind-badge').textContent])")
        assert sorted(p for p, b in badges if b) == soft
        assert {b for _, b in badges if b} == {"defocus · 7 px"}
        assert page.inner_text("[data-count=defocus]") == str(len(soft))
        assert page.inner_text("[data-count=motion]") == "0"
        page.click(".chip[data-filter=defocus]")
        _wait_tiles(page, len(soft))
        assert sorted(page.eval_on_selector_all(".tile", "els => els.map(e => e.dataset.path)")) == soft
        page.click(".chip[data-filter=motion]")
        _wait_tiles(page, 0)
        page.wait_for_selector("#empty:not([hidden])")
