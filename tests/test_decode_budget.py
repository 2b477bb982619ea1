"""Decode memory: the byte budget, the process-wide decode pool, forged JPEG headers, Pillow's warnings, and the
pixels of the tiled conversion (bit for bit those of the whole-image conversion the model was trained on).

Allocations are measured for real: the decode runs in a forked child, whose peak virtual memory (``VmPeak``,
which the kernel resets to the current size at fork) minus its size before the decode counts every byte that
Pillow, libjpeg, libtiff, zlib, NumPy and OpenCV asked for, touched or not. So a buffer the cost model forgets (a
row-pointer array, a strip buffer, a conversion copy) makes these tests fail.
"""
from __future__ import annotations

import json
import os
import select
import struct
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps

import bombs
from ensemble import imageio
from ensemble.imageio import DecodePool, ImageError, load_image
from fixtures import REPO_ROOT, make_photo, needs_model, save_jpeg

MiB = 1 << 20
SLACK = 6 * MiB  # the interpreter's own small allocations during a decode (frames, dicts, the file object)
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="measures /proc/self/status")


# --------------------------------------------------------------------------------------------------------------
# Helpers


HELPER = r"""
import ctypes, json, os, sys, tempfile
ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD, fixed: big blocks never enter the heap
import cv2
cv2.setNumThreads(0)  # no OpenCV worker threads: their stacks and malloc arenas are not the decode's
import numpy as np
from PIL import Image
from ensemble import imageio

def vm(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

with tempfile.TemporaryDirectory() as tmp:  # import every plugin and codec once, here, not in the measured child
    for name in ("a.png", "a.jpg", "a.tif", "a.bmp", "a.webp"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(os.path.join(tmp, name))
        for mode in ("L", "RGB"):
            imageio.load_image(os.path.join(tmp, name), mode)
print("ready", flush=True)
for line in sys.stdin:
    path, mode, side, budget = json.loads(line)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        imageio.DECODE_POOL = imageio.DecodePool()
        start = vm("VmSize:")
        try:
            imageio.load_image(path, mode, side, budget=budget)
            outcome = "ok"
        except imageio.ImageError as err:
            outcome = f"ImageError: {err}"
        except BaseException as err:
            outcome = f"{type(err).__name__}: {err}"
        os.write(w, json.dumps([outcome, vm("VmPeak:") - start, imageio.DECODE_POOL.peak]).encode())
        os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    print(data.decode() or json.dumps(["child died", 0, 0]), flush=True)
"""


class Meter:
    """Measures decodes in children forked from a fresh helper process, whose heap holds no memory freed by
    earlier decodes (a child reusing such memory would hide allocations from VmPeak)."""

    def __init__(self):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
        self.proc = subprocess.Popen([sys.executable, "-c", HELPER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env=env, text=True)
        assert self._line(120) == "ready"

    def _line(self, timeout: float) -> str:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            self.proc.kill()
            pytest.fail(f"the measured decode did not finish within {timeout} s")
        return self.proc.stdout.readline().strip()

    def __call__(self, path, mode="L", side=imageio.ANALYSIS_SIDE, budget=imageio.DECODE_BUDGET,
                 timeout: float = 60.0) -> tuple[str, int, int]:
        """(outcome, bytes the child's peak virtual memory grew by, bytes the decode pool reserved) of
        ``load_image(path, mode, side, budget=budget)``; outcome is 'ok', 'ImageError: <reason>' or
        '<Type>: <message>'."""
        self.proc.stdin.write(json.dumps([str(path), mode, side, budget]) + "\n")
        self.proc.stdin.flush()
        outcome, grew, reserved = json.loads(self._line(timeout))
        return outcome, grew, reserved

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(30)


@pytest.fixture(scope="module")
def meter():
    m = Meter()
    yield m
    m.close()


def old_load_image(path, mode="L", side=imageio.ANALYSIS_SIDE) -> imageio.Decoded:
    """The decode before the byte budget (whole-image conversion, ImageOps.exif_transpose), kept to check that
    the tiled conversion gives the same pixels."""

    def to_8bit(img, mode):
        if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
            arr = np.asarray(img, dtype=np.float32)
            peak = arr.max(initial=0)
            top = 65535.0 if img.mode.startswith("I;16") or peak > 255 else 1.0 if img.mode == "F" and peak <= 1 \
                else 255.0
            grey = np.clip(arr * (255.0 / top), 0, 255).astype(np.uint8)
            return grey if mode == "L" else np.repeat(grey[..., None], 3, axis=2)
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            img = Image.alpha_composite(canvas, rgba)
        return np.asarray(img.convert(mode))

    img = Image.open(path)
    orient = img.getexif().get(0x0112, 1)
    width, height = (img.height, img.width) if orient in (5, 6, 7, 8) else (img.width, img.height)
    if side is not None and img.format == "JPEG":
        img.draft(mode, imageio.analysis_size(img.width, img.height, side))
    img.load()
    img = ImageOps.exif_transpose(img)
    pixels = to_8bit(img, mode)
    if side is not None:
        pixels = imageio.resize_to_analysis(pixels, side)
    return imageio.Decoded(np.ascontiguousarray(pixels), width, height)


def png_with_exif(path: Path, img: Image.Image, orientation: int) -> Path:
    exif = Image.Exif()
    exif[0x0112] = orientation
    img.save(path, exif=exif.tobytes())
    return path


# --------------------------------------------------------------------------------------------------------------
# The same pixels as before


@pytest.fixture(scope="module")
def modes(tmp_path_factory) -> dict[str, Path]:
    """Small files in every mode the conversion handles, with noise so a misplaced tile shows."""
    root = tmp_path_factory.mktemp("modes")
    rng = np.random.default_rng(7)
    h, w = 37, 301  # wider than the test's tile, so rows are split too
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, (h, w), dtype=np.uint8)
    grey16 = rng.integers(0, 65536, (h, w), dtype=np.uint16)
    files = {}

    def save(name, img, **kw):
        files[name] = root / name
        img.save(files[name], **kw)

    save("rgb.png", Image.fromarray(rgb))
    save("grey.png", Image.fromarray(rgb[..., 0]))
    save("rgba.png", Image.fromarray(np.dstack([rgb, alpha]), "RGBA"))
    save("la.png", Image.fromarray(np.dstack([rgb[..., 1], alpha]), "LA"))
    pal = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    save("palette.png", pal)
    save("palette-trns.png", pal, transparency=bytes(range(0, 256, 4)))
    save("palette-trns-index.png", pal, transparency=3)
    save("bilevel.png", Image.fromarray(rgb[..., 2] > 128))
    save("grey16.png", Image.fromarray(grey16))
    save("rgba16.tif", Image.fromarray(np.dstack([rgb, alpha]), "RGBA"), compression="tiff_adobe_deflate")
    save("float01.tif", Image.fromarray(rng.random((h, w), dtype=np.float32), "F"))
    save("float300.tif", Image.fromarray((rng.random((h, w)) * 300).astype(np.float32), "F"))
    nan = rng.random((h, w), dtype=np.float32)
    nan[3, 5] = np.nan
    save("float-nan.tif", Image.fromarray(nan, "F"))
    save("int200.tif", Image.fromarray(rng.integers(0, 200, (h, w)).astype(np.int32), "I"))
    save("int5000.tif", Image.fromarray(rng.integers(0, 5000, (h, w)).astype(np.int32), "I"))
    save("cmyk.jpg", Image.fromarray(rgb).convert("CMYK"), quality=90)
    save("cmyk.tif", Image.fromarray(rgb).convert("CMYK"))
    for k in range(1, 9):
        files[f"orient{k}.jpg"] = save_jpeg(root / f"orient{k}.jpg", rgb, orientation=k)
        files[f"orient{k}.png"] = png_with_exif(root / f"orient{k}.png", Image.fromarray(rgb), k)
    big = make_photo(3, (900, 1300))
    files["big-orient6.jpg"] = save_jpeg(root / "big-orient6.jpg", big, orientation=6)  # drafted to 1/2
    tif = Image.fromarray(rgb)
    exif = Image.Exif()
    exif[0x0112] = 8
    save("orient8.tif", tif, exif=exif.tobytes())
    return files


@pytest.mark.parametrize("mode", ["L", "RGB"])
@pytest.mark.parametrize("side", [imageio.ANALYSIS_SIDE, 20, None])
def test_tiled_conversion_gives_the_same_pixels_as_before(modes, monkeypatch, mode, side):
    monkeypatch.setattr(imageio, "TILE_PIXELS", 97)  # many tiles, and rows split in pieces
    seen = set()
    for name, path in modes.items():
        with np.errstate(invalid="ignore"):  # the old code's cast of NaN pixels warns
            old = old_load_image(path, mode, side)
        new = load_image(path, mode, side)
        seen.add(Image.open(path).mode)
        assert (new.width, new.height) == (old.width, old.height), name
        assert new.pixels.dtype == np.uint8 and new.pixels.flags.c_contiguous, name
        assert new.pixels.shape == old.pixels.shape and np.array_equal(new.pixels, old.pixels), name
    assert {"RGB", "L", "RGBA", "LA", "P", "1", "I;16", "F", "I", "CMYK"} <= seen


def test_tiles_cover_the_image_once():
    for w, h in [(1, 1), (5, 3), (97, 2), (98, 5), (1000, 1), (1, 1000)]:
        hits = np.zeros((h, w), int)
        for x0, y0, x1, y1 in imageio._tiles(w, h):
            assert (x1 - x0) * (y1 - y0) <= imageio.TILE_PIXELS
            hits[y0:y1, x0:x1] += 1
        assert (hits == 1).all()


# --------------------------------------------------------------------------------------------------------------
# The cost model against real allocations


@pytest.fixture(scope="module")
def kinds(tmp_path_factory) -> dict[str, Path]:
    """One of each kind of bomb, at a size a test can afford (tens of MB decoded, at most 1.4 MB on disk)."""
    root = tmp_path_factory.mktemp("kinds")
    made = {
        "rgba16.png": bombs.png_bomb(root / "rgba16.png", 1600, 1500, 16, bombs.RGBA),
        "grey16.png": bombs.png_bomb(root / "grey16.png", 2500, 2000, 16, bombs.GREY),
        "rgb8.png": bombs.png_bomb(root / "rgb8.png", 2000, 1800, 8, bombs.RGB),
        "palette.png": bombs.png_bomb(root / "palette.png", 3000, 2000, 8, bombs.PALETTE, transparency=True),
        "tall.png": bombs.png_bomb(root / "tall.png", 1, 2_000_000),  # 16 MB of row pointers for 2 MB of pixels
        "wide.png": bombs.png_bomb(root / "wide.png", 3_000_000, 1),
        "strip.tif": bombs.tiff_bomb(root / "strip.tif", 2000, 2000, 4, 16),  # one 32 MB strip
        "strips.tif": bombs.tiff_bomb(root / "strips.tif", 1200, 1000, 3, 16, rows_per_strip=8),
    }
    made["photo.jpg"] = save_jpeg(root / "photo.jpg", cv2.resize(make_photo(4, (300, 400)), (4000, 3000)))
    (root / "progressive.jpg").write_bytes(bombs.jpeg_bytes(3000, 2400, "RGB", progressive=True))
    made["progressive.jpg"] = root / "progressive.jpg"
    return made


@pytest.mark.parametrize("mode", ["L", "RGB"])
@pytest.mark.parametrize("kind", ["rgba16.png", "grey16.png", "rgb8.png", "palette.png", "tall.png", "wide.png",
                                  "strip.tif", "strips.tif", "photo.jpg", "progressive.jpg"])
def test_cost_covers_every_allocation_of_the_decode(meter, kinds, kind, mode):
    outcome, grew, reserved = meter(kinds[kind], mode)
    assert outcome == "ok"
    assert grew <= reserved + SLACK, f"{kind}: allocated {grew / MiB:.1f} MiB, reserved {reserved / MiB:.1f} MiB"
    # ... and the model stays close enough to be useful: no image refused for a cost it does not have.
    assert reserved <= 2 * grew + 16 * MiB, f"{kind}: reserved {reserved / MiB:.1f} MiB for {grew / MiB:.1f} MiB"


def test_row_pointers_count(kinds):
    """Pillow keeps an 8-byte pointer per row: a 1-pixel-wide image costs 9 bytes a pixel, not 1."""
    img = Image.open(kinds["tall.png"])
    cost = imageio.decode_cost(img, "L", None)
    assert cost.pillow >= 9 * 2_000_000


def test_over_budget_image_is_refused_before_decoding(kinds, monkeypatch):
    pool = DecodePool()
    monkeypatch.setattr(imageio, "DECODE_POOL", pool)
    loaded = []
    from PIL import ImageFile, TiffImagePlugin

    for cls in (ImageFile.ImageFile, TiffImagePlugin.TiffImageFile):
        monkeypatch.setattr(cls, "load", lambda self: loaded.append(self))
    for kind in ("rgba16.png", "strip.tif", "tall.png"):
        with pytest.raises(ImageError) as err:
            load_image(kinds[kind], "L", budget=4 * MiB)
        message = err.value.reason
        assert str(err.value) == f"{kinds[kind]}: {message}"
        assert message.startswith("image needs ") and message.endswith(" MiB to decode, over the 4 MiB budget")
        assert "\n" not in message
    assert not loaded and pool.peak == 0


def test_the_default_budget_refuses_a_single_strip_tiff_bomb(tmp_path):
    """12000 × 12000 16-bit RGBA in one strip: libtiff's strip buffer alone would be 1.1 GB."""
    path = bombs.tiff_bomb(tmp_path / "over.tif", 12000, 12000, 4, 16, rows=1)
    with pytest.raises(ImageError, match=r": image needs [\d,]+ MiB to decode, over the 1,024 MiB budget$"):
        load_image(path)


# --------------------------------------------------------------------------------------------------------------
# The pool


def test_pool_lets_one_bomb_decode_at_a_time(kinds, monkeypatch):
    path = kinds["rgba16.png"]
    img = Image.open(path)
    cost = imageio.decode_cost(img, "L", imageio.ANALYSIS_SIDE).total
    pool = DecodePool(capacity=cost * 3 // 2)  # room for one, not two
    monkeypatch.setattr(imageio, "DECODE_POOL", pool)
    start = threading.Barrier(6)
    results, errors = [], []

    def work():
        start.wait()
        try:
            results.append(load_image(path, "L"))
        except Exception as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 6
    assert pool.peak_holders == 1 and cost <= pool.peak <= pool.capacity
    assert pool.in_use == 0 and pool.holders == 0


def test_pool_caps_a_reservation_at_its_capacity():
    pool = DecodePool(capacity=100)
    with pool.reserve(500) as held:
        assert held == 100 and pool.in_use == 100
        got = threading.Event()

        def second():
            with pool.reserve(10):
                got.set()

        t = threading.Thread(target=second)
        t.start()
        assert not got.wait(0.2)  # cannot fit beside the first
    t.join(5)
    assert got.is_set() and pool.in_use == 0 and pool.peak == 100 and pool.peak_holders == 1


def test_pool_survives_an_interrupted_wait():
    pool = DecodePool(capacity=10)
    with pool.reserve(10):
        cond_wait = pool._cond.wait

        def interrupted(*a, **kw):
            raise KeyboardInterrupt

        pool._cond.wait = interrupted
        with pytest.raises(KeyboardInterrupt):
            with pool.reserve(5):
                pass
        pool._cond.wait = cond_wait
    with pool.reserve(5) as held:  # the abandoned place in the queue does not block the next one
        assert held == 5


# --------------------------------------------------------------------------------------------------------------
# Forged JPEG headers


def test_forged_jpeg_size_is_corrupt(tmp_path):
    path = bombs.forged_jpeg(tmp_path / "forged.jpg", 65000, 2000)
    for mode in ("L", "RGB"):
        with pytest.raises(ImageError, match=r"\.jpg: corrupt: the header claims 65000x2000 pixels but the file holds "
                                             r"only [\d,]+ bytes of image data \(at least 253,907 needed\)$"):
            load_image(path, mode)


def test_without_the_check_libjpeg_scores_the_forged_size(tmp_path, monkeypatch):
    """What the check prevents: libjpeg fills the missing rows with grey and says nothing."""
    path = bombs.forged_jpeg(tmp_path / "forged.jpg", 65000, 2000)
    monkeypatch.setattr(imageio, "_check_jpeg", lambda path, img: None)
    dec = load_image(path)
    assert (dec.width, dec.height) == (65000, 2000)


@pytest.mark.parametrize("options", [
    {}, {"optimize": True}, {"progressive": True}, {"progressive": True, "optimize": True},
    {"subsampling": 0}, {"subsampling": 2, "quality": 5}, {"restart_marker_blocks": 1}])
@pytest.mark.parametrize("size", [(1, 1), (8, 8), (17, 9), (3000, 2000)])
def test_genuine_jpegs_pass_the_check(tmp_path, options, size):
    for colour in ("L", "RGB"):
        flat = Image.new(colour, size, 128 if colour == "L" else (90, 120, 200))  # the least data per block
        path = tmp_path / f"{colour}.jpg"
        flat.save(path, "JPEG", **options)
        dec = load_image(path)
        assert (dec.width, dec.height) == size


def test_arithmetic_coded_jpegs_are_not_checked(tmp_path):
    data = bombs.forge_jpeg_size(bombs.jpeg_bytes(64, 48), 6400, 4800)
    at = bombs.sof_offset(data)
    path = tmp_path / "arith.jpg"
    path.write_bytes(data[:at + 1] + b"\xc9" + data[at + 2:])  # SOF9: arithmetic coding
    info = imageio._read_jpeg(path)
    assert info.arithmetic and (info.width, info.height) == (6400, 4800)
    assert imageio._check_jpeg(path, Image.open(path)) == info


def test_truncated_jpeg_is_corrupt(tmp_path):
    data = bombs.jpeg_bytes(2000, 1500, "RGB")
    at = data.index(b"\xff\xda")
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[:at + 40])
    with pytest.raises(ImageError, match=r"cut\.jpg: corrupt"):
        load_image(path)


# --------------------------------------------------------------------------------------------------------------
# Property tests: no header, however forged, makes a decode exceed the budget

BUDGET = 48 * MiB
PNG_DEPTHS = {bombs.GREY: (1, 2, 4, 8, 16), bombs.RGB: (8, 16), bombs.PALETTE: (1, 2, 4, 8),
              bombs.GREY_ALPHA: (8, 16), bombs.RGBA: (8, 16)}


@st.composite
def sizes(draw, max_pixels: int = 40_000_000):
    """Width and height: any aspect ratio (the width log-uniform), from 1 pixel to 150 MP, many near the budget."""
    bits = draw(st.integers(0, 18))
    w = draw(st.integers(1 << bits, (2 << bits) - 1))
    h = draw(st.one_of(st.integers(1, max(1, max_pixels // w)), st.integers(1, 1 << 16)))
    return w, h


def _check_within_budget(meter, path: Path, mode: str) -> None:
    outcome, grew, reserved = meter(path, mode, budget=BUDGET)
    assert outcome == "ok" or outcome.startswith("ImageError: "), outcome
    assert "\n" not in outcome
    assert reserved <= BUDGET
    assert grew <= BUDGET + SLACK, f"{outcome}: allocated {grew / MiB:.1f} MiB over a {BUDGET // MiB} MiB budget"


PROPERTY = settings(max_examples=50, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
PNG_KINDS = [(colour, depth) for colour, depths in PNG_DEPTHS.items() for depth in depths]


@PROPERTY
@given(size=sizes(), kind=st.sampled_from(PNG_KINDS), rows=st.integers(0, 3), transparency=st.booleans(),
       mode=st.sampled_from(["L", "RGB"]))
@example(size=(1, 15_000_000), kind=(bombs.GREY, 8), rows=2, transparency=False, mode="L")  # row pointers
@example(size=(20_000_000, 2), kind=(bombs.RGBA, 16), rows=1, transparency=False, mode="RGB")  # one huge row
@example(size=(3000, 3000), kind=(bombs.PALETTE, 8), rows=3, transparency=True, mode="RGB")
def test_forged_png_header_stays_within_budget(meter, tmp_path, size, kind, rows, transparency, mode):
    path = bombs.png_bomb(tmp_path / "forged.png", *size, kind[1], kind[0], rows=rows, transparency=transparency)
    _check_within_budget(meter, path, mode)


@PROPERTY
@given(size=st.tuples(st.integers(1, 65535), st.integers(1, 65535)), progressive=st.booleans(),
       colour=st.sampled_from(["L", "RGB"]), mode=st.sampled_from(["L", "RGB"]),
       real=st.tuples(st.integers(1, 400), st.integers(1, 400)))
@example(size=(65000, 2000), progressive=False, colour="RGB", mode="L", real=(400, 300))
@example(size=(4000, 4000), progressive=True, colour="RGB", mode="RGB", real=(400, 400))
def test_forged_jpeg_header_stays_within_budget(meter, tmp_path, size, progressive, colour, mode, real):
    path = tmp_path / "forged.jpg"
    path.write_bytes(bombs.forge_jpeg_size(bombs.jpeg_bytes(*real, colour, progressive=progressive), *size))
    _check_within_budget(meter, path, mode)


@PROPERTY
@given(size=sizes(), samples=st.sampled_from([1, 3, 4]), depth=st.sampled_from([8, 16]),
       strips=st.integers(1, 64), rows=st.integers(0, 3), mode=st.sampled_from(["L", "RGB"]))
@example(size=(2500, 2000), samples=4, depth=16, strips=1, rows=1, mode="L")  # one 40 MB strip
@example(size=(1, 15_000_000), samples=1, depth=8, strips=4, rows=1, mode="L")
def test_forged_tiff_header_stays_within_budget(meter, tmp_path, size, samples, depth, strips, rows, mode):
    w, h = size
    path = bombs.tiff_bomb(tmp_path / "forged.tif", w, h, samples, depth, -(-h // strips), rows=rows)
    _check_within_budget(meter, path, mode)


# --------------------------------------------------------------------------------------------------------------
# Pillow's warnings never reach stderr


def bad_exif_jpeg(path: Path, size=(640, 480)) -> Path:
    """A JPEG whose EXIF points a tag at data past its end: Pillow warns 'Tag data larger than file'."""
    tiff = b"II*\x00" + struct.pack("<IH", 8, 2)
    tiff += struct.pack("<HHII", 0x010E, 2, 4000, 4000) + struct.pack("<HHII", 0x0112, 3, 1, 1) + b"\0\0\0\0"
    Image.fromarray(make_photo(2, size[::-1])).save(path, "JPEG", exif=b"Exif\x00\x00" + tiff)
    return path


@needs_model
def test_no_pillow_warning_reaches_stderr_of_a_scan(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    bad_exif_jpeg(photos / "bad-exif.jpg")
    bombs.png_bomb(photos / "big.png", 9500, 9500)  # 90 MP: over Pillow's 89.5 MP warning, under our cap
    with pytest.warns(Image.DecompressionBombWarning):  # Pillow does warn: the test cannot pass vacuously
        Image.open(photos / "big.png")
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), PYTHONWARNINGS="default")
    proc = subprocess.run([sys.executable, "-m", "ensemble", "scan", "--format", "jsonl", "-q", "--workers", "2",
                           "--save-maps", str(tmp_path / "maps"), str(photos)],
                          capture_output=True, text=True, env=env, timeout=300)
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert proc.returncode == 0, proc.stderr
    assert sorted(Path(r["path"]).name for r in records) == ["bad-exif.jpg", "big.png"]
    assert "Warning" not in proc.stderr and "warn" not in proc.stderr.lower(), proc.stderr
    assert len(list((tmp_path / "maps").glob("*.blurmap.png"))) == 2


def test_pillow_warns_about_these_files(tmp_path):
    """The files of the stderr test do make Pillow warn, when nothing filters the warning."""
    import warnings

    bad_exif_jpeg(tmp_path / "bad-exif.jpg", (64, 48))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Image.open(tmp_path / "bad-exif.jpg").getexif()
    assert any(issubclass(w.category, UserWarning) and w.filename.endswith("TiffImagePlugin.py") for w in caught)
