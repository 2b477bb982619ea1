"""Receive the images of a ``POST /api/predict``: stream the multipart body to temporary files, capped and sniffed.

The body is parsed as it arrives (python-multipart), so a file over the cap is refused at its first byte over it,
and nothing larger than the cap is ever held or written. Each file's type is sniffed from its first bytes; its name
and Content-Type are never trusted. Decoding is left to :mod:`ensemble.imageio`, through the same
:func:`ensemble.scan.score_one` the command line uses, so a corrupt file becomes an error record there.

Besides the files, the body may carry the text fields of :data:`TEXT_FIELDS` (``scale``), each once.

Errors raise :class:`UploadError` with an HTTP status and one line for the user:
413 a file over the cap or too many files, 415 a body that is not multipart or a file that is not an image,
422 a malformed request (bad multipart framing, no file, unexpected fields, a text field with a bad value).
"""
from __future__ import annotations

import codecs
import os
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import AsyncIterator, BinaryIO, Optional
from urllib.parse import unquote_to_bytes

from ..detector import check_scale
from .errors import ServiceError

FILE_FIELDS = ("files", "file")
"""Form fields that carry images (``files`` is the documented one; ``file`` is accepted for ``curl -F file=@x``)."""

TEXT_FIELDS = {"scale": check_scale}
"""Text form fields accepted beside the files, each with the check of its value (which returns it, or raises
ValueError with one line): ``scale``, the scale the request's images are judged at (ensemble.detector.SCALES;
absent: the server's ``--scale``)."""

MAX_TEXT_BYTES = 64
"""The longest value of a text field."""

SNIFF_BYTES = 32

# (offset, signature) pairs for the formats ensemble.imageio decodes (ensemble.imageio.IMAGE_SUFFIXES).
_SIGNATURES = {
    "jpeg": [(0, b"\xff\xd8\xff")],
    "png": [(0, b"\x89PNG\r\n\x1a\n")],
    "tiff": [(0, b"II*\x00"), (0, b"MM\x00*"), (0, b"II+\x00"), (0, b"MM\x00+")],
    "bmp": [(0, b"BM")],
    "webp": [(0, b"RIFF")],  # with b"WEBP" at offset 8, checked below
}
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1", b"avif"}


class UploadError(ServiceError):
    """A request the service refuses. ``status`` is the HTTP status, ``str(err)`` one line for the user."""


@dataclass(frozen=True)
class Upload:
    """One received file: ``name`` the sanitised file name (the record's path), ``path`` the temporary copy,
    ``size`` in bytes, ``kind`` the sniffed format (None for an empty file, which decoding reports)."""

    name: str
    path: Path
    size: int
    kind: Optional[str]


def sniff(head: bytes) -> Optional[str]:
    """The image format the first bytes of a file announce ('jpeg', 'png', 'tiff', 'bmp', 'webp', 'heif'), or None."""
    for kind, sigs in _SIGNATURES.items():
        for offset, sig in sigs:
            if head[offset : offset + len(sig)] == sig:
                if kind == "webp" and head[8:12] != b"WEBP":
                    continue
                if kind == "bmp" and len(head) < 14:  # a BMP file header alone is 14 bytes
                    continue
                return kind
    if head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS:
        return "heif"
    return None


def clean_name(raw: str, index: int) -> str:
    """A file name fit to echo back: the last path component, no control characters, at most 255 characters.

    Browsers and curl send the bare name, but a client may send ``../../x.jpg`` or ``C:\\photos\\x.jpg``; the
    name is only ever echoed in records (files are stored under names of our own), never used as a path.
    """
    name = PurePosixPath(raw.replace("\\", "/")).name
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C").strip()
    if name in ("", ".", ".."):
        return f"upload-{index + 1}"
    return name[:255]


def _codec(charset: bytes) -> str:
    try:
        return codecs.lookup(charset.decode("latin-1")).name
    except (LookupError, ValueError):
        return "utf-8"


def _mb(n: int) -> str:
    return f"{n / 2**20:g} MB"


class _Receiver:
    """python-multipart callbacks that write file parts to ``folder``, enforcing the caps as bytes arrive."""

    def __init__(self, folder: Path, max_bytes: int, max_files: int):
        self.folder, self.max_bytes, self.max_files = folder, max_bytes, max_files
        self.uploads: list[Upload] = []
        self.ended = False
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""
        self._file: Optional[BinaryIO] = None
        self._skip = False
        self._name = ""
        self._path: Optional[Path] = None
        self._size = 0
        self._head = b""
        self._kind: Optional[str] = None
        self.fields: dict[str, str] = {}
        self._text: Optional[str] = None  # the text field whose value is being received
        self._value = b""

    # -- part headers -------------------------------------------------------------------------------------------
    def on_part_begin(self) -> None:
        self._disposition = b""
        self._skip = False
        self._text = None

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        if self._header_name.strip().lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name = self._header_value = b""

    def on_headers_finished(self) -> None:
        from python_multipart.multipart import parse_options_header

        kind, options = parse_options_header(self._disposition)
        if kind != b"form-data" or b"name" not in options:
            raise UploadError(422, "malformed multipart body: a part has no 'Content-Disposition: form-data; name=...'")
        field = options[b"name"].decode("utf-8", "replace")
        extended = re.search(rb"filename\*\s*=\s*([^;]+)", self._disposition)  # RFC 5987, dropped by the parser
        if extended and b"filename" not in options:
            charset, _, quoted = extended.group(1).strip().strip(b'"').partition(b"''")
            options[b"filename"] = unquote_to_bytes(quoted).decode(_codec(charset), "replace").encode()
        if b"filename" not in options and field in FILE_FIELDS:  # e.g. curl -F 'files=<x.jpg' (a text field)
            raise UploadError(422, f"field {field!r} holds text, not a file: upload each image as a file "
                                   f"(curl -F {field}=@photo.jpg)")
        if b"filename" not in options and field in TEXT_FIELDS:
            if field in self.fields:
                raise UploadError(422, f"form field {field!r} is given twice")
            self._text, self._value = field, b""
            return
        if b"filename" not in options:
            raise UploadError(422, f"unexpected form field {field!r}: send the images as files in the 'files' field"
                                   + (f" (text fields: {', '.join(TEXT_FIELDS)})" if TEXT_FIELDS else ""))
        if field in TEXT_FIELDS:
            raise UploadError(422, f"form field {field!r} holds a file, not text (curl -F {field}=VALUE)")
        if field not in FILE_FIELDS:
            raise UploadError(422, f"unexpected file field {field!r}: send the images in the 'files' field")
        raw_name = options[b"filename"].decode("utf-8", "replace")
        if raw_name == "":
            self._skip = True  # a browser form's empty file input: no file was chosen
            return
        if len(self.uploads) >= self.max_files:
            raise UploadError(413, f"too many files: at most {self.max_files} per request")
        self._name = clean_name(raw_name, len(self.uploads))
        self._path = self.folder / f"{len(self.uploads):04d}.upload"  # our own name, never the client's
        self._file = open(self._path, "wb")
        self._size, self._head, self._kind = 0, b"", None

    # -- part bodies --------------------------------------------------------------------------------------------
    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._text is not None:
            self._value += data[start:end]
            if len(self._value) > MAX_TEXT_BYTES:
                raise UploadError(422, f"form field {self._text!r}: longer than {MAX_TEXT_BYTES} bytes")
            return
        if self._skip or self._file is None:
            return
        chunk = data[start:end]
        self._size += len(chunk)
        if self._size > self.max_bytes:
            raise UploadError(413, f"{self._name}: file too large (the limit is {_mb(self.max_bytes)} per file)")
        if self._kind is None and len(self._head) < SNIFF_BYTES:
            self._head += chunk[: SNIFF_BYTES - len(self._head)]
            if len(self._head) >= SNIFF_BYTES:
                self._check_kind()
        self._file.write(chunk)

    def on_part_end(self) -> None:
        if self._text is not None:
            self._end_text()
            return
        if self._skip or self._file is None:
            return
        self._file.close()
        self._file = None
        if self._size and self._kind is None:
            self._check_kind()  # files shorter than SNIFF_BYTES
        self.uploads.append(Upload(self._name, self._path, self._size, self._kind))

    def on_end(self) -> None:
        self.ended = True

    def _end_text(self) -> None:
        field, self._text = self._text, None
        value = self._value.decode("utf-8", "replace").strip()
        try:  # the check's message shows the value with repr(): one line, whatever was sent
            self.fields[field] = TEXT_FIELDS[field](value.lower())
        except ValueError as err:
            raise UploadError(422, f"form field {field!r}: {err}") from None

    def _check_kind(self) -> None:
        self._kind = sniff(self._head)
        if self._kind is None:
            raise UploadError(415, f"{self._name}: not an image (its content is not JPEG, PNG, TIFF, BMP, WebP "
                                   f"or HEIC)")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def callbacks(self) -> dict:
        return {name: getattr(self, name) for name in (
            "on_part_begin", "on_part_data", "on_part_end", "on_header_field", "on_header_value", "on_header_end",
            "on_headers_finished", "on_end")}


def multipart_boundary(content_type: str) -> bytes:
    """The boundary of a ``multipart/form-data`` Content-Type; UploadError 415/422 otherwise."""
    from python_multipart.multipart import parse_options_header

    kind, options = parse_options_header(content_type)
    if kind != b"multipart/form-data":
        shown = kind.decode("latin-1") or "none"
        raise UploadError(415, f"expected a multipart/form-data body with the images in 'files', got {shown}")
    boundary = options.get(b"boundary", b"")
    if not boundary or len(boundary) > 200 or not re.fullmatch(rb"[ -~]+", boundary):
        raise UploadError(422, "malformed request: multipart/form-data without a valid boundary")
    return boundary


async def receive_uploads(content_type: str, content_length: Optional[str], body: AsyncIterator[bytes],
                          folder: str | os.PathLike, max_bytes: int, max_files: int,
                          fields: Optional[dict] = None) -> list[Upload]:
    """Parse a multipart body from ``body`` chunks into files under ``folder``; returns them in upload order.
    ``fields``, when given, receives the text fields (:data:`TEXT_FIELDS`) the body carried, checked.

    Raises :class:`UploadError`. Files already written stay in ``folder`` (the caller removes the folder).
    """
    from python_multipart.exceptions import MultipartParseError
    from python_multipart.multipart import MultipartParser

    boundary = multipart_boundary(content_type)
    budget = max_files * (max_bytes + 64 * 1024) + 64 * 1024  # every file at the cap, plus framing
    if content_length is not None:
        try:
            declared = int(content_length)
        except ValueError:
            raise UploadError(422, "malformed request: bad Content-Length") from None
        if declared > budget:
            raise UploadError(413, f"request too large: at most {max_files} files of {_mb(max_bytes)} each")
    receiver = _Receiver(Path(folder), max_bytes, max_files)
    parser = MultipartParser(boundary, receiver.callbacks())
    received = 0
    try:
        async for chunk in body:
            received += len(chunk)
            if received > budget:
                raise UploadError(413, f"request too large: at most {max_files} files of {_mb(max_bytes)} each")
            parser.write(chunk)
            if receiver.ended:
                break
        parser.finalize()
    except MultipartParseError as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        raise UploadError(422, f"malformed multipart body: {reason}") from None
    finally:
        receiver.close()
    if not receiver.ended:
        raise UploadError(422, "malformed multipart body: it ends before its closing boundary")
    if not receiver.uploads:
        raise UploadError(422, "no file uploaded: send one or more images as multipart/form-data field 'files'")
    if fields is not None:
        fields.update(receiver.fields)
    return receiver.uploads
