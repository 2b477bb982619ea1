"""Decompression bombs and forged headers, small on disk, for the decode-budget tests and benchmarks/bench_memory.py.

Every builder streams its pixels row by row through zlib, so writing a 12000 × 12000 16-bit RGBA PNG (1.1 GB of
pixels, about 1 MB on disk) takes seconds and almost no memory. The pixels are a flat field with a few stripes, so
the files compress as well as a real bomb does.
"""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

# PNG colour types (PNG spec, table 11.1) and their samples per pixel.
GREY, RGB, PALETTE, GREY_ALPHA, RGBA = 0, 2, 3, 4, 6
PNG_SAMPLES = {GREY: 1, RGB: 3, PALETTE: 1, GREY_ALPHA: 2, RGBA: 4}


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _row(width: int, samples: int, depth: int, seed: int) -> bytes:
    """One scanline's bytes (no filter byte): a mid-grey field with a few darker stripes."""
    nbytes = (width * samples * depth + 7) // 8
    rng = np.random.default_rng(seed)
    row = np.full(nbytes, 0x80, np.uint8)
    for start in rng.integers(0, max(1, nbytes - 64), 8):
        row[start:start + 64] = 0x20
    return row.tobytes()


def png_bomb(path: Path, width: int, height: int, depth: int = 8, colour: int = GREY, *,
             rows: int | None = None, palette_size: int = 256, transparency: bool = False) -> Path:
    """A PNG whose header says ``width`` × ``height`` at ``depth`` bits per sample, colour type ``colour``.

    ``rows`` (default: all) is how many scanlines of data the file really holds: fewer makes a truncated file
    whose header still claims the full size. Written in one IDAT, streamed through zlib.
    """
    samples = PNG_SAMPLES[colour]
    rows = height if rows is None else min(rows, height)
    out = io.BytesIO()
    out.write(b"\x89PNG\r\n\x1a\n")
    out.write(_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)))
    if colour == PALETTE:
        n = min(palette_size, 1 << depth)
        out.write(_chunk(b"PLTE", bytes(np.linspace(0, 255, 3 * n).astype(np.uint8))))
        if transparency:
            out.write(_chunk(b"tRNS", bytes([128] * n)))
    comp = zlib.compressobj(6)
    parts = []
    line = b"\x00" + _row(width, samples, depth, 1)
    per_call = max(1, (1 << 20) // len(line))  # feed zlib about 1 MiB at a time, however narrow the rows
    block = line * per_call
    for top in range(0, rows, per_call):
        data = comp.compress(block if top + per_call <= rows else line * (rows - top))
        if data:
            parts.append(data)
    parts.append(comp.flush())
    out.write(_chunk(b"IDAT", b"".join(parts)))
    out.write(_chunk(b"IEND", b""))
    path.write_bytes(out.getvalue())
    return path


def tiff_bomb(path: Path, width: int, height: int, samples: int = 4, depth: int = 16,
              rows_per_strip: int | None = None, *, rows: int | None = None) -> Path:
    """A little-endian, deflate-compressed TIFF (RGB(A) for 3/4 samples, grey for 1) in strips of
    ``rows_per_strip`` rows (default: one strip for the whole image, the biggest buffer libtiff can be asked for).
    ``rows`` (default: all) is how many rows of data the strips really hold."""
    rps = max(1, height if rows_per_strip is None else rows_per_strip)
    data_rows = height if rows is None else min(rows, height)
    line = _row(width, samples, depth, 2)
    strips = []
    for top in range(0, max(1, height), rps):
        comp = zlib.compressobj(6)
        n = max(0, min(rps, data_rows - top))
        per_call = max(1, (1 << 20) // len(line))
        parts = [comp.compress(line * min(per_call, n - i)) for i in range(0, n, per_call)]
        parts.append(comp.flush())
        strips.append(b"".join(parts))
    photometric = 2 if samples >= 3 else 1
    entries = [
        (256, 4, 1, width), (257, 4, 1, height), (258, 3, samples, [depth] * samples), (259, 3, 1, 8),
        (262, 3, 1, photometric), (273, 4, len(strips), None), (277, 3, 1, samples), (278, 4, 1, rps),
        (279, 4, len(strips), [len(s) for s in strips]), (284, 3, 1, 1),
    ]
    if samples in (2, 4):
        entries.append((338, 3, 1, 2))  # ExtraSamples: unassociated alpha
    entries.sort()
    ifd_offset = 8
    ifd_size = 2 + 12 * len(entries) + 4
    extra = bytearray()
    data_start = ifd_offset + ifd_size
    # Arrays that do not fit in 4 bytes go after the IFD; strip data after them.
    extra_items = {}
    for tag, typ, count, value in entries:
        size = {3: 2, 4: 4}[typ] * count
        if size > 4 and tag != 273:
            extra_items[tag] = data_start + len(extra)
            extra += struct.pack(f"<{count}{'H' if typ == 3 else 'I'}", *value)
    offsets_at = data_start + len(extra)
    if len(strips) > 1:
        extra += b"\x00" * (4 * len(strips))
    strip_at = data_start + len(extra)
    offsets, pos = [], strip_at
    for s in strips:
        offsets.append(pos)
        pos += len(s)
    if len(strips) > 1:
        extra[offsets_at - data_start:offsets_at - data_start + 4 * len(strips)] = struct.pack(
            f"<{len(strips)}I", *offsets)
    ifd = struct.pack("<H", len(entries))
    for tag, typ, count, value in entries:
        if tag == 273:
            field = struct.pack("<I", offsets[0] if len(strips) == 1 else offsets_at)
        elif tag in extra_items:
            field = struct.pack("<I", extra_items[tag])
        elif typ == 3:
            vals = value if isinstance(value, list) else [value]
            field = struct.pack(f"<{len(vals)}H", *vals).ljust(4, b"\x00")
        else:
            vals = value if isinstance(value, list) else [value]
            field = struct.pack("<I", vals[0])
        ifd += struct.pack("<HHI", tag, typ, count) + field
    ifd += struct.pack("<I", 0)
    path.write_bytes(b"II*\x00" + struct.pack("<I", ifd_offset) + ifd + bytes(extra) + b"".join(strips))
    return path


def jpeg_bytes(width: int, height: int, mode: str = "L", **save) -> bytes:
    """A real JPEG of a flat field with stripes (``save``: Pillow's JPEG options, e.g. progressive=True)."""
    img = Image.new(mode, (width, height), 128 if mode == "L" else (128, 100, 90))
    band = Image.new(mode, (max(1, width // 50), height), 30 if mode == "L" else (30, 30, 30))
    for x in range(0, width, max(1, width // 7)):
        img.paste(band, (x, 0))
    out = io.BytesIO()
    img.save(out, "JPEG", quality=save.pop("quality", 85), **save)
    return out.getvalue()


def sof_offset(data: bytes) -> int:
    """Offset of the SOFn marker of a JPEG (its 0xFF byte)."""
    pos = 2
    while pos + 4 <= len(data):
        marker = data[pos + 1]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return pos
        pos += 2 + struct.unpack(">H", data[pos + 2:pos + 4])[0]
    raise ValueError("no SOF marker")


def forge_jpeg_size(data: bytes, width: int, height: int) -> bytes:
    """``data`` with the SOF's width and height replaced: the header lies about the size, the scan data does not."""
    at = sof_offset(data)
    return data[:at + 5] + struct.pack(">HH", height, width) + data[at + 9:]


def forged_jpeg(path: Path, width: int = 65000, height: int = 2000, real: tuple[int, int] = (640, 480)) -> Path:
    """A ``real`` (w, h) JPEG whose header claims ``width`` × ``height``."""
    path.write_bytes(forge_jpeg_size(jpeg_bytes(*real, mode="RGB"), width, height))
    return path
