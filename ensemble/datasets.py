"""Labelled datasets: find the images and their labels, decode them at the analysis scale, split, cache.

Three layouts are understood, and :func:`detect_layout` tells them apart:

``certh-train``
    ``CERTH_ImageBlurDataset/TrainingSet/{Undistorted,Naturally-Blurred,Artificially-Blurred}``: Undistorted is
    sharp (0), the other two blurry (1). The root may be given as ``CERTH_ImageBlurDataset/`` or ``TrainingSet/``.
``certh-eval``
    ``CERTH_ImageBlurDataset/EvaluationSet/{NaturalBlurSet,DigitalBlurSet}`` with ``NaturalBlurSet.xlsx`` and
    ``DigitalBlurSet.xlsx`` beside the folders (label 1 = blurred, -1 = sharp). When a root holds both the training
    and the evaluation set, detection picks the training set: ask for ``layout="certh-eval"`` explicitly.
``csv``
    ``labels.csv`` (or any ``.csv`` file given directly) with a ``path,blurry[,scene]`` header, paths relative to the
    CSV's folder.
``folders``
    One folder per class: ``sharp/`` (0), ``blurry/``, ``defocused_blurred/``, ``motion_blurred/`` (1), names
    compared case-insensitively, images found recursively.

Nothing here prints: progress goes through tqdm on stderr and problems with single files come back as one-line
warnings ("path: reason"); only a problem with the whole dataset raises :class:`DatasetError`.
"""
from __future__ import annotations

import csv
import hashlib
import os
import pickle
import re
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from .fsutil import atomic_write
from .imageio import ANALYSIS_SIDE, ImageError, is_image_name, load_image

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared/datasets/blur-photos-640"
"""The project's development dataset (CSV layout), beside the repository in ``../shared``."""

LAYOUTS = ("certh-train", "certh-eval", "csv", "folders")

PICKLE_FORMAT = "blur-ensemble/dataset"
PICKLE_VERSION = 1

CERTH_DIR = "CERTH_ImageBlurDataset"
CERTH_TRAIN_DIR = "TrainingSet"
CERTH_EVAL_DIR = "EvaluationSet"
CERTH_TRAIN_CLASSES = {"Undistorted": 0, "Naturally-Blurred": 1, "Artificially-Blurred": 1}
CERTH_EVAL_SETS = ("NaturalBlurSet", "DigitalBlurSet")

FOLDER_CLASSES = {"sharp": 0, "blurry": 1, "defocused_blurred": 1, "motion_blurred": 1}

_TRUE = {"1", "true", "yes", "y", "t"}
_FALSE = {"0", "false", "no", "n", "f"}


class DatasetError(Exception):
    """The dataset as a whole cannot be used. ``str(err)`` is a one-line reason fit to show a user."""


@dataclass(frozen=True)
class Item:
    """One labelled image, before decoding. ``label`` is 0 (sharp) or 1 (blurry)."""

    path: str
    label: int
    scene: str
    source: str


class ItemList(list):
    """A ``list[Item]`` that also carries the listing's ``warnings`` (rows skipped, files missing...)."""

    def __init__(self, items=(), warnings: list[str] | None = None):
        super().__init__(items)
        self.warnings: list[str] = list(warnings or [])


@dataclass
class LoadedData:
    """Decoded images with their labels.

    ``images``: uint8 (H, W) grey arrays at the analysis scale (sizes may differ). ``labels``: int8 (N,), 0 sharp,
    1 blurry. ``meta``: one dict per image with keys path, label, source, scene, width, height (original size).
    ``warnings``: one line per image that was skipped. ``info``: anything else a pickle carried (created,
    fingerprint, split...).
    """

    images: list[np.ndarray]
    labels: np.ndarray
    meta: list[dict]
    warnings: list[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def scenes(self) -> list[str]:
        return [m["scene"] for m in self.meta]

    @property
    def sources(self) -> list[str]:
        return [m["source"] for m in self.meta]

    def subset(self, indices) -> LoadedData:
        """A new LoadedData with the images at ``indices`` (ints in the order given, or a boolean mask)."""
        idx = np.asarray(indices)
        if idx.dtype == bool:
            if idx.shape != (len(self),):
                raise ValueError(f"boolean mask of shape {idx.shape} for {len(self)} images")
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64, copy=False).reshape(-1)
        return LoadedData(
            images=[self.images[i] for i in idx],
            labels=self.labels[idx].astype(np.int8, copy=True),
            meta=[dict(self.meta[i]) for i in idx],
            warnings=list(self.warnings),
            info=dict(self.info),
        )


# --------------------------------------------------------------------------------------------------------------
# Layout detection


def _children(folder: Path) -> dict[str, Path]:
    """Entries of ``folder`` keyed by lower-case name (empty when it is not a readable folder)."""
    try:
        return {p.name.lower(): p for p in sorted(folder.iterdir())}
    except OSError:
        return {}


def _child_dir(folder: Path, name: str) -> Path | None:
    p = _children(folder).get(name.lower())
    return p if p is not None and p.is_dir() else None


def _certh_candidates(root: Path, set_dir: str) -> list[Path]:
    """``root`` itself, ``root/set_dir`` and ``root/CERTH_ImageBlurDataset/set_dir``, those that exist."""
    candidates = [root]
    for sub in ([set_dir], [CERTH_DIR, set_dir]):
        p: Path | None = root
        for name in sub:
            p = _child_dir(p, name) if p is not None else None
        if p is not None:
            candidates.append(p)
    return candidates


def _certh_train_dir(root: Path) -> Path | None:
    """The folder holding the CERTH training class folders, given the dataset, TrainingSet or parent folder."""
    for cand in _certh_candidates(root, CERTH_TRAIN_DIR):
        if any(_child_dir(cand, c) for c in CERTH_TRAIN_CLASSES):
            return cand
    return None


def _certh_eval_dir(root: Path) -> Path | None:
    """The folder holding NaturalBlurSet/DigitalBlurSet and their sheets, given the dataset, EvaluationSet or parent."""
    for cand in _certh_candidates(root, CERTH_EVAL_DIR):
        kids = _children(cand)
        if any(
            (s.lower() in kids and kids[s.lower()].is_dir()) or f"{s.lower()}.xlsx" in kids for s in CERTH_EVAL_SETS
        ):
            return cand
    return None


def _class_dirs(root: Path) -> list[tuple[Path, int]]:
    out = []
    for name, path in _children(root).items():
        if name in FOLDER_CLASSES and path.is_dir():
            out.append((path, FOLDER_CLASSES[name]))
    return out


def detect_layout(root: str | os.PathLike) -> str:
    """Which layout ``root`` holds: "certh-train", "certh-eval", "csv" or "folders". Raises DatasetError if none."""
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"dataset not found: {root}")
    if root.is_file():
        if root.suffix.lower() == ".csv":
            return "csv"
        raise DatasetError(f"not a dataset: {root} is a file but not a .csv label file")
    if _certh_train_dir(root) is not None:
        return "certh-train"
    if _certh_eval_dir(root) is not None:
        return "certh-eval"
    kids = _children(root)
    if "labels.csv" in kids and kids["labels.csv"].is_file():
        return "csv"
    if _class_dirs(root):
        return "folders"
    raise DatasetError(
        f"no known dataset layout in {root}: expected labels.csv, class folders (sharp/, blurry/, "
        f"defocused_blurred/, motion_blurred/) or CERTH {CERTH_TRAIN_DIR}/ or {CERTH_EVAL_DIR}/"
    )


# --------------------------------------------------------------------------------------------------------------
# Listing


def _walk_images(folder: Path) -> list[Path]:
    """Image-named files under ``folder``, recursively, sorted; hidden files/folders (``.x``, AppleDouble) skipped."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and is_image_name(name):
                found.append(Path(dirpath) / name)
    return found


def list_items(root: str | os.PathLike, layout: str | None = None) -> ItemList:
    """Labelled images of the dataset at ``root``, without decoding anything.

    ``layout`` is one of LAYOUTS, or None to detect it. Returns an ItemList (a ``list[Item]``) whose ``warnings``
    name each row or file that was skipped. Raises DatasetError if the dataset is unusable or holds no image.
    """
    root = Path(root).absolute()
    if layout is None:
        layout = detect_layout(root)
    elif layout not in LAYOUTS:
        raise DatasetError(f"unknown dataset layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    elif not root.exists():
        raise DatasetError(f"dataset not found: {root}")
    lister = {
        "certh-train": _list_certh_train,
        "certh-eval": _list_certh_eval,
        "csv": _list_csv,
        "folders": _list_folders,
    }[layout]
    items, warns = lister(root)
    if not items:
        more = f" ({len(warns)} problems, first: {warns[0]})" if warns else ""
        raise DatasetError(f"no labelled images found in {root} (layout {layout}){more}")
    return ItemList(items, warns)


def _list_certh_train(root: Path) -> tuple[list[Item], list[str]]:
    train = _certh_train_dir(root)
    if train is None:
        raise DatasetError(
            f"no CERTH training set in {root}: expected {CERTH_TRAIN_DIR}/{{{','.join(CERTH_TRAIN_CLASSES)}}}"
        )
    items, warns = [], []
    for cls, label in CERTH_TRAIN_CLASSES.items():
        folder = _child_dir(train, cls)
        if folder is None:
            warns.append(f"{train / cls}: folder missing")
            continue
        for path in _walk_images(folder):
            items.append(Item(str(path), label, str(path), f"CERTH-{cls}"))
    return items, warns


def _parse_certh_label(value: Any) -> int | None:
    """CERTH label cell → 1 (blurred) / 0 (sharp), or None when it is not a label."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        num = float(value)
    elif isinstance(value, str):
        try:
            num = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    if num == 1:
        return 1
    if num in (-1, 0):
        return 0
    return None


def read_certh_sheet(path: str | os.PathLike) -> tuple[list[tuple[str, int]], list[str]]:
    """Rows of a CERTH label sheet (.xlsx, or .csv) as (stripped name, label 0/1), plus warnings for bad rows.

    The first row is a header when its label cell is not a label (``Image Name,Blur Label`` for NaturalBlurSet,
    ``MyDigital Blur,<empty>`` for DigitalBlurSet). Rows with an empty name and label are ignored silently.
    """
    path = Path(path)
    if path.suffix.lower() == ".csv":
        try:
            with open(path, newline="", encoding="utf-8-sig") as f:
                raw = [tuple(r) for r in csv.reader(f)]
        except (OSError, UnicodeDecodeError, csv.Error) as err:
            raise DatasetError(f"cannot read label sheet {path}: {err}") from None
    else:
        raw = _read_xlsx_rows(path)
    rows: list[tuple[str, int]] = []
    warns: list[str] = []
    for n, row in enumerate(raw, start=1):
        cells = list(row) + [None, None]
        name, value = cells[0], cells[1]
        name = "" if name is None else str(name).strip()
        if not name and (value is None or str(value).strip() == ""):
            continue
        label = _parse_certh_label(value)
        if label is None:
            if n == 1:
                continue  # header
            warns.append(f"{path} row {n}: bad label {value!r} for {name!r} (expected 1 or -1)")
            continue
        if not name:
            warns.append(f"{path} row {n}: label without an image name")
            continue
        rows.append((name, label))
    return rows, warns


def _read_xlsx_rows(path: Path) -> list[tuple]:
    import openpyxl  # imported here: only CERTH evaluation needs it

    try:
        wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as err:  # openpyxl raises many types (zipfile, KeyError, InvalidFileException...)
        raise DatasetError(f"cannot read label sheet {path}: {type(err).__name__}: {err}".splitlines()[0]) from None
    try:
        for ws in wb.worksheets:  # the label sheet is the first one with content (others are empty)
            rows = [tuple(r) for r in ws.iter_rows(values_only=True)]
            if any(any(c is not None and str(c).strip() for c in r) for r in rows):
                return rows
        return []
    finally:
        wb.close()


def _find_sheet(eval_dir: Path, set_name: str, set_dir: Path | None) -> Path | None:
    """``<set>.xlsx`` (or ``<set>.csv``) beside the set folder, else inside it, else one level up."""
    places = [eval_dir] + ([set_dir] if set_dir is not None else []) + [eval_dir.parent]
    for suffix in (".xlsx", ".csv"):
        for place in places:
            p = _children(place).get(f"{set_name.lower()}{suffix}")
            if p is not None and p.is_file():
                return p
    return None


def _resolve_certh_name(folder: Path, index: dict[str, Path], stems: dict[str, Path], name: str) -> Path | None:
    """The file for sheet name ``name``: as written, else with ``.jpg`` added; suffix case ignored (.JPG)."""
    exact = folder / name
    if exact.is_file():
        return exact
    hit = index.get(name.lower())
    if hit is None and not is_image_name(name):
        hit = index.get(f"{name.lower()}.jpg") or stems.get(name.lower())
    return hit


def _list_certh_eval(root: Path) -> tuple[list[Item], list[str]]:
    eval_dir = _certh_eval_dir(root)
    if eval_dir is None:
        raise DatasetError(
            f"no CERTH evaluation set in {root}: expected {CERTH_EVAL_DIR}/{{{','.join(CERTH_EVAL_SETS)}}} "
            "with their .xlsx sheets"
        )
    items, warns = [], []
    for set_name in CERTH_EVAL_SETS:
        set_dir = _child_dir(eval_dir, set_name)
        sheet = _find_sheet(eval_dir, set_name, set_dir)
        if set_dir is None and sheet is None:
            continue
        if sheet is None:
            warns.append(f"{eval_dir / (set_name + '.xlsx')}: label sheet missing, {set_name} skipped")
            continue
        if set_dir is None:
            warns.append(f"{eval_dir / set_name}: image folder missing, {set_name} skipped")
            continue
        rows, row_warns = read_certh_sheet(sheet)
        warns.extend(row_warns)
        files = [p for p in sorted(set_dir.iterdir()) if p.is_file()]
        index = {p.name.lower(): p for p in files}
        stems: dict[str, Path] = {}
        for p in files:
            if is_image_name(p.name):
                stems.setdefault(p.stem.lower(), p)
        seen: set[Path] = set()
        for name, label in rows:
            path = _resolve_certh_name(set_dir, index, stems, name)
            if path is None:
                warns.append(f"{set_dir / name}: listed in {sheet.name} but no such image file")
                continue
            if path in seen:
                warns.append(f"{path}: listed twice in {sheet.name}, later row skipped")
                continue
            seen.add(path)
            items.append(Item(str(path), label, _certh_eval_scene(set_name, path), set_name))
    return items, warns


def _certh_eval_scene(set_name: str, path: Path) -> str:
    """DigitalBlurSet holds 16 versions (15 blurs + original) of 30 photos, ``<Kind>_<n>.jpg``: scene = n."""
    if set_name == "DigitalBlurSet":
        m = re.fullmatch(r".+_(\d+)", path.stem)
        if m:
            return f"{set_name}:{int(m.group(1))}"
    return f"{set_name}:{path.name}"


def _parse_blurry(value: str) -> int | None:
    v = value.strip().lower()
    if v in _TRUE:
        return 1
    if v in _FALSE:
        return 0
    try:
        num = float(v)
    except ValueError:
        return None
    return int(num) if num in (0.0, 1.0) else None


def _list_csv(root: Path) -> tuple[list[Item], list[str]]:
    if root.is_file():
        csv_path = root
    else:
        csv_path = _children(root).get("labels.csv")
        if csv_path is None or not csv_path.is_file():
            raise DatasetError(f"no labels.csv in {root}")
    base = csv_path.parent
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DatasetError(f"cannot read {csv_path}: {err}".splitlines()[0]) from None
    if not rows:
        raise DatasetError(f"{csv_path} is empty: expected a header path,blurry[,scene]")
    header = [h.strip().lower() for h in rows[0]]
    if "path" not in header or "blurry" not in header:
        raise DatasetError(f"{csv_path}: header must name columns path,blurry[,scene], found {','.join(rows[0])}")
    col_path, col_label = header.index("path"), header.index("blurry")
    col_scene = header.index("scene") if "scene" in header else None
    items, warns = [], []
    seen: set[Path] = set()
    for n, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue
        cells = row + [""] * (len(header) - len(row))
        rel = cells[col_path].strip()
        label = _parse_blurry(cells[col_label])
        if not rel:
            warns.append(f"{csv_path} row {n}: empty path")
            continue
        if label is None:
            warns.append(f"{csv_path} row {n}: bad blurry value {cells[col_label]!r} for {rel} (expected 0/1)")
            continue
        path = base / rel
        if not path.is_file():
            warns.append(f"{path}: listed in {csv_path.name} row {n} but no such file")
            continue
        if path in seen:
            warns.append(f"{path}: listed twice in {csv_path.name}, row {n} skipped")
            continue
        seen.add(path)
        scene = cells[col_scene].strip() if col_scene is not None else ""
        items.append(Item(str(path), label, scene or rel, "csv"))
    return items, warns


_PAIR_SUFFIX = re.compile(r"^(.+?)[_-](s|f|m|sharp|blur|blurry|blurred|defocus|defocused|motion)$", re.IGNORECASE)


def _pair_key(rel: Path) -> str:
    """Name shared by shots of one scene across class folders: ``3_PHONE_S.jpg`` / ``3_PHONE_F.jpg`` → ``3_phone``."""
    stem = rel.stem
    m = _PAIR_SUFFIX.match(stem)
    if m:
        stem = m.group(1)
    return (rel.parent / stem).as_posix().lower()


def _list_folders(root: Path) -> tuple[list[Item], list[str]]:
    classes = _class_dirs(root)
    if not classes:
        raise DatasetError(f"no class folders in {root}: expected {', '.join(f + '/' for f in FOLDER_CLASSES)}")
    found: list[tuple[Path, int, str, str]] = []  # path, label, class folder name, pair key
    for folder, label in classes:
        for path in _walk_images(folder):
            found.append((path, label, folder.name, _pair_key(path.relative_to(folder))))
    # A name found in several class folders is several shots of one scene (e.g. the sharp/defocused/motion
    # triplets ``N_DEVICE_{S,F,M}.jpg``, or ``sharp/001.jpg`` + ``blurry/001.jpg``): they share a scene so that
    # a split never puts one shot on each side. Otherwise each image is its own scene.
    folders_of: dict[str, set[str]] = {}
    for _, _, cls, key in found:
        folders_of.setdefault(key, set()).add(cls.lower())
    items = []
    for path, label, cls, key in found:
        scene = f"pair:{key}" if len(folders_of[key]) > 1 else str(path)
        items.append(Item(str(path), label, scene, cls))
    return items, []


# --------------------------------------------------------------------------------------------------------------
# Decoding


def _decode(item: Item, side: int | None) -> tuple[np.ndarray | None, int, int, str | None]:
    try:
        dec = load_image(item.path, mode="L", side=side)
    except ImageError as err:
        return None, 0, 0, f"{item.path}: {err.reason}"
    except Exception as err:  # never let one file stop a run
        reason = (str(err).splitlines() or [""])[0]
        return None, 0, 0, f"{item.path}: unexpected error: {type(err).__name__}: {reason}"
    pixels = dec.pixels
    if pixels.dtype != np.uint8 or pixels.ndim != 2 or min(pixels.shape) < 1:
        return None, 0, 0, f"{item.path}: decoded to an unexpected array {pixels.dtype} {pixels.shape}"
    return pixels, dec.width, dec.height, None


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def load_dataset(
    items: Sequence[Item] | str | os.PathLike,
    side: int | None = ANALYSIS_SIDE,
    progress: bool = True,
    workers: int | None = None,
) -> LoadedData:
    """Decode ``items`` in grey at the analysis scale (shorter side ``side``, never upsampled; None = full size).

    ``items`` may also be a dataset path, listed with :func:`list_items`. Images are decoded on ``workers``
    threads (default: the CPU count, at most 8), in the order given. An unreadable image is skipped with a
    warning "path: reason"; the listing's own warnings (``ItemList.warnings``) come first in ``warnings``.
    """
    if isinstance(items, (str, os.PathLike)):
        items = list_items(items)
    warns = list(getattr(items, "warnings", []))
    items = list(items)
    workers = default_workers() if workers is None else max(1, int(workers))
    images: list[np.ndarray] = []
    labels: list[int] = []
    meta: list[dict] = []
    bar = tqdm(total=len(items), desc="decoding", unit="img", disable=not progress, file=sys.stderr)
    try:
        if workers == 1 or len(items) <= 1:
            results: Iterator = (_decode(it, side) for it in items)
            pool = None
        else:
            pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode")
            results = pool.map(lambda it: _decode(it, side), items)  # map keeps the input order
        try:
            for item, (pixels, width, height, problem) in zip(items, results):
                bar.update(1)
                if problem is not None:
                    warns.append(problem)
                    continue
                label = int(item.label)
                images.append(pixels)
                labels.append(label)
                meta.append(
                    {
                        "path": str(item.path),
                        "label": label,
                        "source": str(item.source),
                        "scene": str(item.scene),
                        "width": int(width),
                        "height": int(height),
                    }
                )
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
    finally:
        bar.close()
    return LoadedData(images, np.asarray(labels, dtype=np.int8).reshape(-1), meta, warns)


# --------------------------------------------------------------------------------------------------------------
# Splits


def _groups(scenes: Sequence, labels: Sequence | None) -> tuple[np.ndarray, np.ndarray]:
    """(group index per sample, counts[group, class]) with groups numbered in sorted scene order."""
    keys = [str(s) for s in scenes]
    uniq = sorted(set(keys))
    pos = {s: i for i, s in enumerate(uniq)}
    group = np.fromiter((pos[s] for s in keys), dtype=np.int64, count=len(keys))
    if labels is None:
        cls = np.zeros(len(keys), dtype=np.int64)
    else:
        lab = np.asarray(labels).reshape(-1)
        if len(lab) != len(keys):
            raise ValueError(f"{len(lab)} labels for {len(keys)} scenes")
        _, cls = np.unique(lab, return_inverse=True)
        cls = cls.reshape(-1)
    counts = np.zeros((len(uniq), int(cls.max(initial=0)) + 1), dtype=np.int64)
    np.add.at(counts, (group, cls), 1)
    return group, counts


def split_by_scene(
    scenes: Sequence, test_fraction: float = 0.2, seed: int = 0, labels: Sequence | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, test_idx): about ``test_fraction`` of the samples in test, no scene on both sides.

    Deterministic for a given (scenes, seed), whatever the order of the samples. With ``labels``, scenes are
    picked so that each label's share in test is close to ``test_fraction`` too (stratified).
    Index arrays are sorted int64.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    group, counts = _groups(scenes, labels)
    n_groups = len(counts)
    if n_groups < 2:
        raise ValueError(f"need at least 2 scenes to split, got {n_groups}")
    target = counts.sum(axis=0) * test_fraction
    in_test = np.zeros(n_groups, dtype=bool)
    filled = np.zeros(counts.shape[1], dtype=np.float64)
    order = np.random.default_rng(seed).permutation(n_groups)
    for g in order:
        new = filled + counts[g]
        if np.abs(new - target).sum() < np.abs(filled - target).sum():
            in_test[g] = True
            filled = new
    if not in_test.any():  # tiny data: put one of the smallest scenes in test
        sizes = counts.sum(axis=1)
        in_test[min(order, key=lambda g: sizes[g])] = True
    if in_test.all():
        in_test[order[-1]] = False
    test_mask = in_test[group]
    return np.flatnonzero(~test_mask), np.flatnonzero(test_mask)


def scene_folds(
    scenes: Sequence, k: int = 5, seed: int = 0, labels: Sequence | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``k`` (train_idx, val_idx) pairs, GroupKFold-style: each scene in exactly one val fold.

    Scenes go largest first (ties in a seeded random order) to the fold that holds the least of their labels
    (stratified when ``labels`` is given, else balanced by size). Deterministic for a given (scenes, seed).
    """
    if k < 2:
        raise ValueError(f"k must be at least 2, got {k}")
    group, counts = _groups(scenes, labels)
    n_groups = len(counts)
    if n_groups < k:
        raise ValueError(f"cannot make {k} folds from {n_groups} scenes")
    totals = np.maximum(counts.sum(axis=0), 1).astype(np.float64)
    sizes = counts.sum(axis=1)
    perm = np.random.default_rng(seed).permutation(n_groups)
    order = perm[np.argsort(-sizes[perm], kind="stable")]
    fill = np.zeros((k, counts.shape[1]), dtype=np.float64)
    fold_of = np.empty(n_groups, dtype=np.int64)
    for g in order:
        share = counts[g] / totals
        cost = (fill / totals) @ share
        f = min(range(k), key=lambda i: (round(float(cost[i]), 12), fill[i].sum(), i))
        fold_of[g] = f
        fill[f] += counts[g]
    sample_fold = fold_of[group]
    for f in range(k):
        yield np.flatnonzero(sample_fold != f), np.flatnonzero(sample_fold == f)


# --------------------------------------------------------------------------------------------------------------
# Fingerprint and pickles


def fingerprint(meta: Sequence[dict]) -> str:
    """Short hex digest of the dataset's content: (relative path, label, width, height) of each image, sorted.

    Paths are taken relative to the images' common folder, so a dataset moved elsewhere keeps its fingerprint.
    """
    paths = [os.path.abspath(str(m["path"])) for m in meta]
    base = os.path.commonpath([os.path.dirname(p) for p in paths]) if paths else ""
    lines = sorted(
        f"{Path(os.path.relpath(p, base)).as_posix()}\t{int(m['label'])}\t{int(m['width'])}\t{int(m['height'])}"
        for p, m in zip(paths, meta)
    )
    digest = hashlib.sha256()
    for line in lines:
        digest.update(line.encode("utf-8") + b"\n")
    return digest.hexdigest()[:16]


_RESERVED = {"format", "version", "images", "labels", "meta", "warnings", "created"}


def _check_pkl_name(path: Path) -> None:
    if path.suffix != ".pkl":
        raise DatasetError(f"dataset cache must be a .pkl file, got {path}")


def save_pickle(data: LoadedData, path: str | os.PathLike, extra: dict | None = None) -> Path:
    """Write ``data`` (plus ``extra``, e.g. fingerprint, split) to ``path`` atomically; returns the path.

    The file is a dict {"format": "blur-ensemble/dataset", "version": 1, "images", "labels", "meta",
    "warnings", "created", **extra} pickled with protocol 5; only plain Python values and numpy arrays belong in
    ``extra`` (anything else is refused by :func:`load_pickle`).
    """
    path = Path(path)
    _check_pkl_name(path)
    extra = dict(extra or {})
    clash = _RESERVED & set(extra)
    if clash:
        raise ValueError(f"extra may not set reserved keys: {', '.join(sorted(clash))}")
    payload = {
        "format": PICKLE_FORMAT,
        "version": PICKLE_VERSION,
        "images": [np.ascontiguousarray(im, dtype=np.uint8) for im in data.images],
        "labels": np.asarray(data.labels, dtype=np.int8),
        "meta": [dict(m) for m in data.meta],
        "warnings": list(data.warnings),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, pickle.dumps(payload, protocol=5))


def _numpy_globals() -> dict[tuple[str, str], Any]:
    try:
        from numpy._core import multiarray, numeric  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for pkg in ("numpy._core", "numpy.core"):  # pickles from numpy 1.x name numpy.core, 2.x numpy._core
        allowed[(f"{pkg}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{pkg}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{pkg}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


_SAFE_BUILTINS = {"bytearray": bytearray, "set": set, "frozenset": frozenset, "complex": complex}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that can only build numpy arrays and plain Python values: any other global is refused."""

    _allowed: dict[tuple[str, str], Any] | None = None

    def find_class(self, module: str, name: str) -> Any:
        if module == "builtins" and name in _SAFE_BUILTINS:
            return _SAFE_BUILTINS[name]
        if _RestrictedUnpickler._allowed is None:
            _RestrictedUnpickler._allowed = _numpy_globals()
        obj = _RestrictedUnpickler._allowed.get((module, name))
        if obj is None:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a dataset pickle")
        return obj


def load_pickle(path: str | os.PathLike) -> LoadedData:
    """Read a dataset pickle written by :func:`save_pickle`. Raises DatasetError for anything else.

    Only ``.pkl`` files are read, through an unpickler that can build nothing but numpy arrays and plain values,
    so a tampered file cannot run code; the "format" marker and the structure are checked after loading.
    Keys other than images/labels/meta/warnings end up in ``LoadedData.info``.
    """
    path = Path(path)
    _check_pkl_name(path)
    try:
        with open(path, "rb") as f:
            payload = _RestrictedUnpickler(f).load()
    except FileNotFoundError:
        raise DatasetError(f"dataset cache not found: {path} (load_traindata.py and load_testdata.py write "
                           "data/train.pkl and data/test.pkl)") from None
    except pickle.UnpicklingError as err:
        raise DatasetError(f"{path}: refused: {str(err).splitlines()[0] if str(err) else 'bad pickle'}") from None
    except OSError as err:
        raise DatasetError(f"cannot read {path}: {err.strerror or err}") from None
    except Exception as err:  # truncated / garbage files raise EOFError, ValueError, TypeError...
        raise DatasetError(f"{path}: not a readable dataset pickle ({type(err).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != PICKLE_FORMAT:
        raise DatasetError(f"{path}: not a {PICKLE_FORMAT} file (format marker missing)")
    if payload.get("version") != PICKLE_VERSION:
        raise DatasetError(f"{path}: unsupported dataset cache version {payload.get('version')!r}")
    images, labels, meta = payload.get("images"), payload.get("labels"), payload.get("meta")
    ok = (
        isinstance(images, list)
        and all(isinstance(im, np.ndarray) and im.dtype == np.uint8 and im.ndim == 2 for im in images)
        and isinstance(labels, np.ndarray)
        and labels.ndim == 1
        and labels.dtype.kind in "iu"
        and len(labels) == len(images)
        and isinstance(meta, list)
        and len(meta) == len(images)
        and all(isinstance(m, dict) for m in meta)
    )
    if not ok:
        raise DatasetError(f"{path}: damaged dataset cache (images, labels and meta do not match)")
    warns = payload.get("warnings", [])
    info = {k: v for k, v in payload.items() if k not in ("images", "labels", "meta", "warnings")}
    return LoadedData(
        images=images,
        labels=labels.astype(np.int8),
        meta=meta,
        warnings=[str(w) for w in warns] if isinstance(warns, list) else [],
        info=info,
    )


__all__ = [
    "DEFAULT_DATA",
    "DatasetError",
    "Item",
    "ItemList",
    "LAYOUTS",
    "LoadedData",
    "PICKLE_FORMAT",
    "PICKLE_VERSION",
    "default_workers",
    "detect_layout",
    "fingerprint",
    "list_items",
    "load_dataset",
    "load_pickle",
    "read_certh_sheet",
    "save_pickle",
    "scene_folds",
    "split_by_scene",
]
