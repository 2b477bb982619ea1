"""Synthetic document scans at native resolution: rendered pages with blur of known kind and extent.

A page is a pure function of its :class:`PageSpec` (font, size, dpi, layout, paper and ink tone, skew, scanner
noise, JPEG quality, seed). :func:`render_page` draws the clean page with Pillow and a real font (headings, wrapped
paragraphs in one or two columns, ruled tables of numbers, forms, line drawings with labels) and returns the exact
text it drew, line by line in reading order. :func:`blur_page` blurs it (optics: Gaussian, defocus disk, linear
motion; all of it or one part of the page, such as a lower half out of focus), and :func:`scan_page` adds what the
scanner's sensor does after the optics (skew, noise, JPEG). :func:`make_page` chains the three.

What "blurry" means for a page is measured, not guessed: ``benchmarks/bench_ocr.py`` runs tesseract over rendered
pages and finds, per font size in pixels, the blur extent at which the character error rate rises clearly above the
clean page's. :func:`page_label` turns that boundary into training and test labels (docs/documents.md).

Fonts come from Debian font packages (``make fonts``); they are split by family into "train" and "heldout".
"""
from __future__ import annotations

import functools
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ensemble.augment import BLUR_KINDS, apply_blur

# ------------------------------------------------------------------------------------------------ layouts and fonts

LAYOUTS: tuple[str, ...] = ("letter", "one_column", "two_columns", "table", "form", "drawing", "mixed")
# Held out from training: a dense layout and a sparse one that no training layout contains. "two_columns" has
# narrow measure and a gutter (dense text in a geometry training never shows); "form" is mostly boxes, rules and
# short labels with empty space between them. "mixed" (the training layout that combines blocks) uses neither.
HELDOUT_LAYOUTS: tuple[str, ...] = ("two_columns", "form")
TRAIN_LAYOUTS: tuple[str, ...] = tuple(k for k in LAYOUTS if k not in HELDOUT_LAYOUTS)

FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts", "~/.local/share/fonts", "~/.fonts")
# File name (upstream names, the same on every distribution) -> family. Symbol, dingbat, script, keyboard and
# hairline faces are left out: nobody sets body text in them.
_FAMILY_RULES: tuple[tuple[str, str], ...] = (
    (r"DejaVuSansMono", "DejaVu Sans Mono"),
    (r"DejaVuSans(Condensed)?([-.])", "DejaVu Sans"),
    (r"DejaVuSerif", "DejaVu Serif"),
    (r"LiberationMono", "Liberation Mono"),
    (r"LiberationSans", "Liberation Sans"),  # also Liberation Sans Narrow
    (r"LiberationSerif", "Liberation Serif"),
    (r"FreeMono", "FreeMono"),
    (r"FreeSans", "FreeSans"),
    (r"FreeSerif", "FreeSerif"),
    (r"NimbusMonoPS", "Nimbus Mono PS"),
    (r"NimbusSans", "Nimbus Sans"),  # also Nimbus Sans Narrow
    (r"NimbusRoman", "Nimbus Roman"),
    (r"C059", "C059"),
    (r"P052", "P052"),
    (r"URWBookman", "URW Bookman"),
    (r"URWGothic", "URW Gothic"),
    (r"Carlito", "Carlito"),
    (r"Caladea", "Caladea"),
    (r"LinLibertine_M", "Linux Libertine Mono"),
    (r"LinLibertine_", "Linux Libertine"),
    (r"LinBiolinum_(R|RB|RI)\.", "Linux Biolinum"),
    (r"Noto(Sans)?Mono", "Noto Mono"),
)
_EXCLUDE = re.compile(r"ExtraLight|MathTeX|StandardSymbols|D050000L|Z003|LinBiolinum_K")
# Held-out families: designs with no close clone in training (the Helvetica, Times and Courier clones - Liberation,
# Nimbus, Free - all stay in training together), one serif pair, one sans pair and a mono.
HELDOUT_FAMILIES: tuple[str, ...] = ("Caladea", "URW Bookman", "Carlito", "Linux Biolinum", "Noto Mono")
_BOLD = re.compile(r"Bold|Demi|_RB|-Bd")
_ITALIC = re.compile(r"Italic|Oblique|Ita|_RI\b|_I\.|_RBI|_RZI")


def font_family(path: str) -> str | None:
    """The family of a font file, from its file name; None for a face the renderer does not use."""
    name = os.path.basename(path)
    if _EXCLUDE.search(name):
        return None
    for pattern, family in _FAMILY_RULES:
        if re.match(pattern, name):
            return family
    return None


def font_style(path: str) -> tuple[bool, bool]:
    """(bold, italic) from the file name."""
    name = os.path.basename(path)
    return bool(_BOLD.search(name)), bool(_ITALIC.search(name))


@functools.lru_cache(maxsize=None)
def _installed_fonts() -> tuple[str, ...]:
    """Every usable font file found, one per file name (fonts-liberation2 wins over fonts-liberation), sorted."""
    found: dict[str, str] = {}
    for root in FONT_DIRS:
        root_path = Path(os.path.expanduser(root))
        if not root_path.is_dir():
            continue
        for p in sorted(root_path.rglob("*")):
            if p.suffix.lower() not in (".ttf", ".otf") or font_family(str(p)) is None:
                continue
            old = found.get(p.name)
            if old is None or ("liberation2" in str(p) and "liberation2" not in old):
                found[p.name] = str(p)
    usable = []
    for path in sorted(found.values(), key=lambda s: (font_family(s), os.path.basename(s))):
        try:  # Pillow must load it and draw ASCII with it
            f = ImageFont.truetype(path, 24, layout_engine=ImageFont.Layout.BASIC)
            l, t, r, b = f.getbbox("Hg0")
            if r - l > 10 and b - t > 10:
                usable.append(path)
        except OSError:
            continue
    return tuple(usable)


def fonts(split: str = "train") -> list[str]:
    """TTF/OTF files of that split ("train", "heldout" or "all"), split by family; held-out families never train."""
    if split not in ("train", "heldout", "all"):
        raise ValueError(f"split must be 'train', 'heldout' or 'all', not {split!r}")
    out = [p for p in _installed_fonts()
           if split == "all" or (font_family(p) in HELDOUT_FAMILIES) == (split == "heldout")]
    if not out:
        raise RuntimeError(f"no {split} fonts installed for document pages: run `make fonts` (Debian font packages)")
    return out


def _sibling(path: str, bold: bool, italic: bool) -> str:
    """The face of the same family with that style (the same file if the family has none)."""
    fam = font_family(path)
    for p in _installed_fonts():
        if font_family(p) == fam and font_style(p) == (bold, italic):
            # prefer the family's own width variant (e.g. Narrow with Narrow)
            if ("Narrow" in p) == ("Narrow" in path) and ("Condensed" in p) == ("Condensed" in path):
                return p
    return path


@functools.lru_cache(maxsize=256)
def _font(path: str, px: float) -> ImageFont.FreeTypeFont:
    # BASIC layout: the same glyph placement with or without libraqm, so a spec renders alike everywhere.
    return ImageFont.truetype(path, max(px, 4.0), layout_engine=ImageFont.Layout.BASIC)


# ------------------------------------------------------------------------------------------------ specs and pages

A4_IN = (210 / 25.4, 297 / 25.4)  # 8.27 x 11.69 in: 2480 x 3508 px at 300 dpi


@dataclass(frozen=True)
class PageSpec:
    """Everything that determines a page: :func:`make_page` is a pure function of it (and of the blur).

    ``crop`` renders only part of the page (for speed and memory at 600 dpi): (left, top, right, bottom) as
    fractions of the page, or (width, height) from the top-left corner. The layout is that of the whole page.
    """
    font: str
    size_pt: float
    dpi: int
    layout: str
    paper: int = 240          # grey level of the paper (~200-250)
    ink: int = 30             # grey level of the ink
    skew_deg: float = 0.0     # page rotation in the scanner
    noise: float = 0.0        # scanner noise sigma, grey levels
    jpeg_quality: int | None = None
    seed: int = 0
    page_in: tuple[float, float] = A4_IN
    crop: tuple[float, ...] | None = None

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown layout {self.layout!r}; expected one of {LAYOUTS}")
        if not 30 <= self.dpi <= 2400 or self.size_pt <= 0:
            raise ValueError(f"implausible dpi {self.dpi} or size {self.size_pt} pt")
        if not 0 <= self.ink < self.paper <= 255:
            raise ValueError(f"need 0 <= ink < paper <= 255, got ink {self.ink}, paper {self.paper}")
        if self.crop is not None:
            box = self.crop_box
            if not (0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1):
                raise ValueError(f"crop {self.crop} is not inside the page (fractions 0-1)")

    @property
    def font_px(self) -> float:
        return self.size_pt * self.dpi / 72.0

    @property
    def page_px(self) -> tuple[int, int]:
        """(width, height) of the whole page in pixels."""
        return round(self.page_in[0] * self.dpi), round(self.page_in[1] * self.dpi)

    @property
    def crop_box(self) -> tuple[float, float, float, float]:
        if self.crop is None:
            return 0.0, 0.0, 1.0, 1.0
        if len(self.crop) == 2:
            return 0.0, 0.0, float(self.crop[0]), float(self.crop[1])
        if len(self.crop) == 4:
            return tuple(float(c) for c in self.crop)  # type: ignore[return-value]
        raise ValueError(f"crop must be (w, h) or (left, top, right, bottom) fractions, not {self.crop!r}")

    @property
    def crop_px(self) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of the rendered part, in whole-page pixels."""
        w, h = self.page_px
        l, t, r, b = self.crop_box
        return round(l * w), round(t * h), round(r * w), round(b * h)


@dataclass(frozen=True)
class TextLine:
    """One drawn line of text and its ink box (x0, y0, x1, y1) in the pixels of ``Page.gray`` before skew."""
    text: str
    box: tuple[int, int, int, int]
    role: str  # "heading", "body", "table", "label", "caption", "small"


@dataclass(frozen=True)
class Page:
    """A page: the grey image (uint8 (H, W)), the text drawn on it and what made it.

    ``text`` is the ground truth for OCR: the lines wholly inside the image, in reading order, one per line (table
    rows are their cells joined by single spaces). ``lines`` are the same with their boxes.
    """
    gray: np.ndarray
    text: str
    font_px: float
    spec: PageSpec
    lines: tuple[TextLine, ...] = ()
    blur: tuple[str, float, float] | None = None
    region: str = "all"


# ------------------------------------------------------------------------------------------------ pseudo-English

_WORDS = tuple("""
the of and to in is that for it as was with be by on not he this are or his from at which but have an they you
were her she there one all we can their has been if more when will would who so no what up out about into than
them only other time new some could these two may first then do any like my now over such our man me even most
made after also did many before must through back years where much your way well down should because each just
those people how too little state good very make world still own see men work long get here between both life
being under never day same another know while last might us great old year off come since against go came right
used take three states himself few house use during without again place around however home small found thought
went say part once general high upon school every does got united left number course war until always away
something fact though water less public put think almost hand enough far took head yet government system better
set told nothing night end why called eyes find going look asked later knew point next program city business give
group toward young days let room president side social given present several order national possible rather second
face per among form often important things looked early white case john become large big need four within felt
along children saw best church ever least power development light thing seemed family interest want members mind
country area others done turned although open problem sense service certain kind different thus began fire whole
office report letter account payment invoice meeting committee budget project schedule contract section figure
table value total amount balance period review annual quarter summary result method sample survey record number
material design market price cost level rate share growth support control process product client customer supply
notice request reply receipt attached enclosed regards sincerely dear please kindly further questions contact
""".split())
_NAMES = ("Anderson", "Baker", "Carter", "Dawson", "Ellis", "Fischer", "Graham", "Hughes", "Ingram", "Jensen",
          "Keller", "Lambert", "Morgan", "Novak", "Owens", "Parker", "Quinn", "Russell", "Schmidt", "Turner",
          "Upton", "Vogel", "Walker", "Young", "Zimmer")
_FIRST = ("Anna", "Brian", "Clara", "David", "Emma", "Frank", "Grace", "Henry", "Irene", "James", "Karen", "Louis",
          "Maria", "Nora", "Oscar", "Paul", "Ruth", "Simon", "Tina", "Victor")
_STREETS = ("Church Street", "Mill Lane", "Station Road", "High Street", "Park Avenue", "Victoria Road",
            "Green Lane", "King Street", "Bridge Road", "Market Place")
_TOWNS = ("Bristol", "Leeds", "Oxford", "York", "Bath", "Exeter", "Lincoln", "Norwich", "Chester", "Durham")
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December")


class _Text:
    """Deterministic pseudo-English from the page's generator (ASCII only: every font has every glyph)."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng

    def word(self) -> str:
        return _WORDS[int(self.rng.integers(len(_WORDS)))]

    def words(self, n: int) -> list[str]:
        return [self.word() for _ in range(n)]

    def number(self) -> str:
        r = self.rng
        k = int(r.integers(6))
        if k == 0:
            return str(int(r.integers(2, 99)))
        if k == 1:
            return f"{int(r.integers(1900, 2030))}"
        if k == 2:
            return f"{r.uniform(1, 99):.1f}%"
        if k == 3:
            return f"${int(r.integers(10, 9999)):,}"
        if k == 4:
            return f"({int(r.integers(1, 40))})"
        return f"{int(r.integers(1, 28))} {_MONTHS[int(r.integers(12))]}"

    def sentence(self) -> list[str]:
        r = self.rng
        n = int(r.integers(5, 19))
        ws = []
        for i in range(n):
            w = self.number() if r.random() < 0.05 else self.word()
            if i and r.random() < 0.04:
                w = self.rng.choice(_NAMES)
            ws.append(w)
        ws[0] = ws[0][:1].upper() + ws[0][1:]
        for i in range(1, n - 1):
            if r.random() < 0.07:
                ws[i] += r.choice([",", ",", ";", ":"])
        ws[-1] += "." if r.random() < 0.93 else "?"
        return ws

    def paragraph(self, sentences: tuple[int, int] = (2, 7)) -> list[str]:
        out: list[str] = []
        for _ in range(int(self.rng.integers(*sentences))):
            out += self.sentence()
        return out

    def title(self, lo: int = 2, hi: int = 7) -> str:
        ws = self.words(int(self.rng.integers(lo, hi)))
        return " ".join(w.capitalize() if len(w) > 3 or i == 0 else w for i, w in enumerate(ws))

    def name(self) -> str:
        return f"{self.rng.choice(_FIRST)} {self.rng.choice(_NAMES)}"

    def date(self) -> str:
        r = self.rng
        return f"{int(r.integers(1, 29))} {_MONTHS[int(r.integers(12))]} {int(r.integers(1950, 2025))}"


# ------------------------------------------------------------------------------------------------ drawing

class _Canvas:
    """Draws in whole-page pixel coordinates onto the cropped image, and records every line of text drawn."""

    def __init__(self, spec: PageSpec):
        self.spec = spec
        self.x0, self.y0, x1, y1 = spec.crop_px
        self.size = (x1 - self.x0, y1 - self.y0)
        self.img = Image.new("L", self.size, spec.paper)
        self.draw = ImageDraw.Draw(self.img)
        self.ink = spec.ink
        self.lines: list[tuple[str, tuple[int, int, int, int], str]] = []  # whole-page boxes
        self.stroke = max(1, round(spec.dpi / 150))  # about 0.17 mm
        self.W, self.H = spec.page_px

    def _visible(self, box) -> bool:
        return box[2] > self.x0 and box[0] < self.x0 + self.size[0] and box[3] > self.y0 and \
            box[1] < self.y0 + self.size[1]

    def text(self, x: float, y: float, s: str, font, role: str = "body", record: bool = True) -> float:
        """Draw ``s`` with its top-left (ascender line) at (x, y); returns its advance width."""
        l, t, r, b = font.getbbox(s)
        box = (int(math.floor(x + l)), int(math.floor(y + t)), int(math.ceil(x + r)), int(math.ceil(y + b)))
        if record:
            self.lines.append((s, box, role))
        if self._visible(box):
            self.draw.text((x - self.x0, y - self.y0), s, font=font, fill=self.ink)
        return font.getlength(s)

    def words(self, x: float, y: float, words: list[str], font, gap: float, role: str = "body"):
        """One line of words with a given gap (justified text), recorded as one line."""
        s = " ".join(words)
        l, t, r, b = font.getbbox(s)
        cx = x
        x_end = x
        for w in words:
            self.text(cx, y, w, font, record=False)
            x_end = cx + font.getlength(w)
            cx = x_end + gap
        self.lines.append((s, (int(math.floor(x + l)), int(math.floor(y + t)), int(math.ceil(x_end)),
                               int(math.ceil(y + b))), role))

    def _shift(self, pts):
        return [(px - self.x0, py - self.y0) for px, py in pts]

    def line(self, pts, width: int | None = None, fill: int | None = None):
        self.draw.line(self._shift(pts), fill=self.ink if fill is None else fill, width=width or self.stroke)

    def rect(self, box, width: int | None = None, fill: int | None = None, outline: bool = True):
        x0, y0, x1, y1 = box
        self.draw.rectangle((x0 - self.x0, y0 - self.y0, x1 - self.x0, y1 - self.y0), fill=fill,
                            outline=self.ink if outline else None, width=width or self.stroke)

    def ellipse(self, box, width: int | None = None, fill: int | None = None):
        x0, y0, x1, y1 = box
        self.draw.ellipse((x0 - self.x0, y0 - self.y0, x1 - self.x0, y1 - self.y0), fill=fill, outline=self.ink,
                          width=width or self.stroke)

    def polygon(self, pts, fill: int | None = None, outline: bool = True):
        self.draw.polygon(self._shift(pts), fill=fill, outline=self.ink if outline else None,
                          width=self.stroke)

    def arrow(self, p, q, head: float):
        self.line([p, q])
        a = math.atan2(q[1] - p[1], q[0] - p[0])
        pts = [q, (q[0] - head * math.cos(a - 0.4), q[1] - head * math.sin(a - 0.4)),
               (q[0] - head * math.cos(a + 0.4), q[1] - head * math.sin(a + 0.4))]
        self.polygon(pts, fill=self.ink)

    def grey(self, frac: float) -> int:
        """A tone ``frac`` of the way from the paper to the ink (for shaded cells and boxes)."""
        return int(round(self.spec.paper + (self.ink - self.spec.paper) * frac))


class _Flow:
    """Text flowing down one or more columns between the page's margins."""

    def __init__(self, cv: _Canvas, t: _Text, spec: PageSpec, rng: np.random.Generator, columns: int = 1,
                 top: float | None = None, box=None):
        self.cv, self.t, self.rng = cv, t, rng
        px = spec.font_px
        W, H = cv.W, cv.H
        dpi = spec.dpi
        if box is None:
            box = (dpi * rng.uniform(0.7, 1.2), dpi * rng.uniform(0.6, 1.0),
                   W - dpi * rng.uniform(0.7, 1.2), H - dpi * rng.uniform(0.7, 1.0))
        self.box = box
        x0, y0, x1, y1 = box
        self.gutter = dpi * rng.uniform(0.25, 0.4)
        cw = (x1 - x0 - self.gutter * (columns - 1)) / columns
        self.cols = [(x0 + i * (cw + self.gutter), x0 + i * (cw + self.gutter) + cw) for i in range(columns)]
        self.col = 0
        self.y = y0 if top is None else top
        self.bottom = y1
        self.font = _font(spec.font, px)
        bold_path = _sibling(spec.font, True, font_style(spec.font)[1])
        self.bold_path = bold_path
        self.lead = px * rng.uniform(1.15, 1.45)
        self.justify = bool(rng.random() < 0.4)
        self.indent = bool(rng.random() < 0.5)
        self.px = px
        self.full = False
        self.top_of_cols: float | None = None  # where columns start after a full-width block
        self.space = self.font.getlength(" ")

    @property
    def x0(self) -> float:
        return self.cols[self.col][0]

    @property
    def x1(self) -> float:
        return self.cols[self.col][1]

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    def need(self, h: float) -> bool:
        """Make room for ``h`` pixels: next column if this one is too short; False when the page is full."""
        if self.full:
            return False
        if self.y + h <= self.bottom:
            return True
        if self.col + 1 < len(self.cols):
            self.col += 1
            self.y = self.box[1] if self.top_of_cols is None else self.top_of_cols
            return self.y + h <= self.bottom
        self.full = True
        return False

    def gap(self, lines: float):
        self.y += self.lead * lines

    def heading(self, level: int = 1, text: str | None = None):
        scale = {0: self.rng.uniform(1.6, 2.2), 1: self.rng.uniform(1.2, 1.5), 2: 1.0}[level]
        f = _font(self.bold_path, self.px * scale)
        s = text or self.t.title()
        if level and text is None and self.rng.random() < 0.4:
            s = f"{int(self.rng.integers(1, 9))}.{int(self.rng.integers(1, 9))} {s}" if level == 2 else \
                f"{int(self.rng.integers(1, 12))} {s}"
        while f.getlength(s) > self.width and " " in s:
            s = s.rsplit(" ", 1)[0]
        h = self.px * scale * 1.3
        if not self.need(h + self.lead):  # keep a heading with its first line
            return
        self.cv.text(self.x0, self.y, s, f, role="heading")
        self.y += h + self.lead * 0.3

    def paragraph(self, words: list[str] | None = None, font=None, role: str = "body", justify=None, indent=None):
        words = words if words is not None else self.t.paragraph()
        font = font or self.font
        justify = self.justify if justify is None else justify
        indent = self.indent if indent is None else indent
        space = font.getlength(" ")
        widths = [font.getlength(w) for w in words]
        i, first = 0, True
        while i < len(words):
            if not self.need(self.lead):
                return
            ind = self.px * 2 if first and indent else 0.0
            avail = self.width - ind
            j, used = i, 0.0
            while j < len(words) and (j == i or used + space + widths[j] <= avail):
                used += (space if j > i else 0.0) + widths[j]
                j += 1
            line = words[i:j]
            last = j >= len(words)
            if justify and not last and len(line) > 1:
                gap = (avail - sum(widths[i:j])) / (len(line) - 1)
                self.cv.words(self.x0 + ind, self.y, line, font, gap, role=role)
            else:
                self.cv.text(self.x0 + ind, self.y, " ".join(line), font, role=role)
            self.y += self.lead
            i, first = j, False
        self.y += self.lead * (0.5 if not indent else 0.0)

    def bullets(self, n: int):
        r = self.px * 0.18
        for _ in range(n):
            ws = self.t.sentence()
            if not self.need(self.lead):
                return
            cy = self.y + self.px * 0.45
            self.cv.ellipse((self.x0 + self.px * 0.5 - r, cy - r, self.x0 + self.px * 0.5 + r, cy + r),
                            fill=self.cv.ink)
            save = self.cols[self.col]
            self.cols[self.col] = (save[0] + self.px * 1.5, save[1])
            col_before = self.col
            self.paragraph(ws, justify=False, indent=False)
            self.cols[col_before] = save
            self.y -= self.lead * 0.3

    def table(self, rows: int | None = None, cols: int | None = None):
        """A ruled table: a header row, a text column and numbers (right-aligned), maybe a total row."""
        rng, t = self.rng, self.t
        rows = rows or int(rng.integers(4, 14))
        cols = cols or int(rng.integers(3, 7))
        font = self.font
        bold = _font(self.bold_path, self.px)
        header = [t.title(1, 3) for _ in range(cols)]
        kind = [int(rng.integers(4)) for _ in range(cols - 1)]

        def num(k):
            if k == 0:
                return f"{rng.uniform(0, 9999):,.2f}"
            if k == 1:
                return str(int(rng.integers(0, 999)))
            if k == 2:
                return f"{rng.uniform(0, 100):.1f}%"
            return f"{int(rng.integers(1995, 2025))}-{int(rng.integers(1, 13)):02d}-{int(rng.integers(1, 29)):02d}"

        body = [[t.title(1, 3)] + [num(k) for k in kind] for _ in range(rows)]
        if rng.random() < 0.5:
            body.append(["Total"] + [num(k) for k in kind])
        pad = self.px * 0.5
        wcol = [max([bold.getlength(header[c])] + [bold.getlength(r[c]) for r in body]) + 2 * pad
                for c in range(cols)]
        while sum(wcol) > self.width and len(wcol) > 2:  # too wide: drop the last column
            wcol.pop()
            header.pop()
            for r in body:
                r.pop()
        cols = len(wcol)
        if sum(wcol) > self.width:
            return
        extra = (self.width - sum(wcol)) * rng.uniform(0, 1)
        wcol = [w + extra / cols for w in wcol]
        rh = self.px * rng.uniform(1.5, 1.9)
        ruled = rng.random() < 0.5  # every row ruled and vertical rules, or booktabs (three rules)
        shade = rng.random() < 0.4
        n_fit = int((self.bottom - self.y) // rh) - 2
        if n_fit < 2:
            self.need(self.bottom)  # nothing fits here
            return
        body = body[:n_fit]
        x0 = self.x0
        xs = [x0]
        for w in wcol:
            xs.append(xs[-1] + w)
        y = self.y
        top = y
        if shade:
            self.cv.rect((x0, y, xs[-1], y + rh), fill=self.cv.grey(0.12), outline=False)
        for ri, row in enumerate([header] + body):
            f = bold if ri == 0 or (row[0] == "Total" and ri == len(body)) else font
            ty = y + (rh - self.px) / 2
            for c, s in enumerate(row):
                if c == 0:
                    tx = xs[c] + pad
                else:
                    tx = xs[c + 1] - pad - f.getlength(s)
                self.cv.text(tx, ty, s, f, role="table", record=False)
            l, tt, r, b = f.getbbox(" ".join(row))
            self.cv.lines.append((" ".join(row), (int(xs[0]), int(ty + tt), int(xs[-1]), int(ty + b)), "table"))
            y += rh
            if ruled or ri == 0:
                self.cv.line([(x0, y), (xs[-1], y)])
        self.cv.line([(x0, top), (xs[-1], top)], width=self.cv.stroke * 2)
        self.cv.line([(x0, y), (xs[-1], y)], width=self.cv.stroke * 2)
        if ruled:
            for x in xs:
                self.cv.line([(x, top), (x, y)])
        self.y = y + self.lead

    def figure(self, height: float | None = None):
        """A line drawing: a flow chart (boxes, arrows, labels), a plot (axes, ticks, curve) or shapes."""
        rng, cv = self.rng, self.cv
        h = height or self.width * rng.uniform(0.35, 0.6)
        if not self.need(h + self.lead * 2):
            return
        x0, y0, x1 = self.x0, self.y, self.x1
        small = _font(self.cv.spec.font, self.px * 0.9)
        kind = int(rng.integers(3))
        if kind == 0:  # flow chart
            n = int(rng.integers(3, 6))
            bw = (x1 - x0) / (n * 1.5)
            bh = min(h * 0.35, self.px * 3)
            cy = y0 + h / 2
            prev = None
            for i in range(n):
                bx = x0 + i * bw * 1.5 + bw * 0.25
                by = cy - bh / 2 + (rng.uniform(-0.25, 0.25) * h if i % 2 else 0)
                if rng.random() < 0.3:
                    cv.ellipse((bx, by, bx + bw, by + bh))
                else:
                    cv.rect((bx, by, bx + bw, by + bh))
                label = self.t.word().capitalize()
                while small.getlength(label) > bw * 0.9 and len(label) > 3:
                    label = label[:-1]
                cv.text(bx + (bw - small.getlength(label)) / 2, by + (bh - self.px) / 2, label, small, "label")
                if prev is not None:
                    cv.arrow((prev[0] + bw, prev[1] + bh / 2), (bx, by + bh / 2), head=self.px * 0.5)
                prev = (bx, by)
        elif kind == 1:  # plot with axes
            ax0, ay1 = x0 + self.px * 3, y0 + h - self.px * 1.5
            ax1, ay0 = x1 - self.px, y0 + self.px * 0.5
            cv.line([(ax0, ay0), (ax0, ay1), (ax1, ay1)])
            nt = int(rng.integers(4, 8))
            for i in range(nt + 1):
                tx = ax0 + (ax1 - ax0) * i / nt
                cv.line([(tx, ay1), (tx, ay1 + self.px * 0.3)])
                s = str(i * int(rng.integers(1, 3)) * 10 if i else 0)
                cv.text(tx - small.getlength(s) / 2, ay1 + self.px * 0.4, s, small, "label")
            for i in range(1, 4):
                ty = ay1 - (ay1 - ay0) * i / 4
                cv.line([(ax0 - self.px * 0.3, ty), (ax0, ty)])
                s = str(i * 25)
                cv.text(ax0 - self.px * 0.5 - small.getlength(s), ty - self.px * 0.5, s, small, "label")
            ys = np.cumsum(rng.normal(0, 1, 40))
            ys = (ys - ys.min()) / (np.ptp(ys) + 1e-6)
            pts = [(ax0 + (ax1 - ax0) * i / 39, ay1 - (ay1 - ay0) * (0.1 + 0.8 * v)) for i, v in enumerate(ys)]
            cv.line(pts, width=cv.stroke * 2)
        else:  # shapes with dimension lines
            cx = x0 + (x1 - x0) * rng.uniform(0.3, 0.5)
            r = h * 0.35
            cv.ellipse((cx - r, y0 + h / 2 - r, cx + r, y0 + h / 2 + r))
            cv.rect((cx + r * 1.4, y0 + h * 0.2, min(x1, cx + r * 3.6), y0 + h * 0.8))
            cv.polygon([(x0, y0 + h * 0.9), (x0 + r, y0 + h * 0.2), (x0 + r * 1.5, y0 + h * 0.9)])
            cv.arrow((cx - r, y0 + h * 0.97), (cx + r, y0 + h * 0.97), head=self.px * 0.4)
            cv.arrow((cx + r, y0 + h * 0.97), (cx - r, y0 + h * 0.97), head=self.px * 0.4)
            s = f"{rng.uniform(5, 95):.1f} mm"
            cv.text(cx - small.getlength(s) / 2, y0 + h * 0.97 - self.px * 1.2, s, small, "label")
        self.y = y0 + h + self.lead * 0.5
        cap = f"Figure {int(rng.integers(1, 12))}: {self.t.title(3, 8).lower().capitalize()}"
        self.cv.text(self.x0, self.y, cap, small, role="caption")
        self.y += self.lead * 1.5


def _page_number(cv: _Canvas, flow: _Flow, rng):
    f = _font(cv.spec.font, flow.px * 0.85)
    s = rng.choice(["{n}", "- {n} -", "Page {n}", "Page {n} of {m}"]).format(n=int(rng.integers(1, 40)),
                                                                            m=int(rng.integers(40, 60)))
    y = cv.H - cv.spec.dpi * 0.55
    cv.text((cv.W - f.getlength(s)) / 2, y, s, f, role="small")


def _layout_one_column(cv, t, spec, rng, columns=1):
    flow = _Flow(cv, t, spec, rng, columns=1)
    flow.heading(0)
    if columns == 2:
        flow.paragraph(t.paragraph((1, 3)), justify=False)
        flow.top_of_cols = flow.y
        flow.cols = _Flow(cv, t, spec, rng, columns=2, box=flow.box).cols
    while not flow.full:
        r = rng.random()
        if r < 0.15:
            flow.heading(1)
        elif r < 0.25:
            flow.heading(2)
        elif r < 0.3:
            flow.bullets(int(rng.integers(2, 5)))
        else:
            flow.paragraph()
    _page_number(cv, flow, rng)


def _layout_letter(cv, t, spec, rng):
    flow = _Flow(cv, t, spec, rng)
    f = flow.font
    name, town = t.name(), rng.choice(_TOWNS)
    sender = [name, f"{int(rng.integers(1, 200))} {rng.choice(_STREETS)}", f"{town} {t.word().upper()[:2]}"
              f"{int(rng.integers(1, 20))} {int(rng.integers(1, 9))}{t.word().upper()[:2]}",
              f"Tel. 0{int(rng.integers(1000, 9999))} {int(rng.integers(100000, 999999))}"]
    for s in sender:  # top right
        flow.cv.text(flow.x1 - f.getlength(s), flow.y, s, f, role="body")
        flow.y += flow.lead
    flow.gap(1.5)
    to = t.name()
    for s in [to, f"{int(rng.integers(1, 200))} {rng.choice(_STREETS)}", rng.choice(_TOWNS)]:
        flow.cv.text(flow.x0, flow.y, s, f)
        flow.y += flow.lead
    flow.gap(1)
    d = t.date()
    flow.cv.text(flow.x1 - f.getlength(d), flow.y, d, f)
    flow.gap(2)
    flow.heading(2, text="Re: " + t.title(2, 6))
    flow.paragraph([f"Dear {rng.choice(['Mr', 'Ms', 'Dr'])} {to.split()[1]},"], justify=False)
    for _ in range(int(rng.integers(2, 6))):
        flow.paragraph()
        if flow.full:
            break
    if flow.need(flow.lead * 5):
        flow.paragraph([rng.choice(["Yours sincerely,", "Kind regards,", "Yours faithfully,"])], justify=False)
        # a signature: a scribble, not text
        y = flow.y + flow.lead
        xs = np.linspace(flow.x0, flow.x0 + flow.px * 8, 30)
        pts = [(x, y + flow.px * 0.6 * math.sin(i * rng.uniform(0.6, 1.2)) * rng.uniform(0.3, 1))
               for i, x in enumerate(xs)]
        flow.cv.line(pts, width=flow.cv.stroke * 2)
        flow.y += flow.lead * 2.5
        if flow.need(flow.lead):
            flow.cv.text(flow.x0, flow.y, name, f)
            flow.y += flow.lead
    small = _font(spec.font, flow.px * 0.75)
    fy = cv.H - spec.dpi * 0.6
    s = f"{t.title(2, 4)} Ltd, registered in {rng.choice(_TOWNS)} No. {int(rng.integers(1000000, 9999999))}"
    cv.line([(flow.box[0], fy - flow.px * 0.5), (flow.box[2], fy - flow.px * 0.5)])
    cv.text(flow.box[0], fy, s, small, role="small")


def _layout_table(cv, t, spec, rng):
    flow = _Flow(cv, t, spec, rng)
    flow.heading(0)
    flow.paragraph(t.paragraph((1, 4)))
    while not flow.full:
        flow.table()
        if flow.full:
            break
        if rng.random() < 0.6:
            flow.paragraph(t.paragraph((1, 3)))
        else:
            flow.heading(2)
    _page_number(cv, flow, rng)


def _layout_form(cv, t, spec, rng):
    flow = _Flow(cv, t, spec, rng)
    flow.heading(0, text=f"{t.title(1, 3)} Form")
    flow.paragraph(t.paragraph((1, 2)), justify=False)
    f, px = flow.font, flow.px
    bh = px * 1.8
    while not flow.full:
        r = rng.random()
        if r < 0.5:  # a row of labelled boxes
            if not flow.need(bh + flow.lead * 1.5):
                break
            n = int(rng.integers(1, 4))
            w = (flow.width - px * (n - 1)) / n
            row = []
            for i in range(n):
                x = flow.x0 + i * (w + px)
                label = t.title(1, 3) + ":"
                while f.getlength(label) > w and len(label) > 4:
                    label = label[:-2] + ":"
                cv.text(x, flow.y, label, f, role="label", record=False)
                row.append(label)
                by = flow.y + flow.lead
                if rng.random() < 0.5:
                    cv.rect((x, by, x + w, by + bh))
                else:
                    cv.line([(x, by + bh), (x + w, by + bh)])
                if rng.random() < 0.5:  # filled in
                    v = t.name() if rng.random() < 0.5 else t.number()
                    while f.getlength(v) > w - px and " " in v:
                        v = v.rsplit(" ", 1)[0]
                    cv.text(x + px * 0.4, by + (bh - px) / 2, v, f, role="label", record=False)
                    row.append(v)
            l, tt, rr, b = f.getbbox(" ".join(row))
            cv.lines.append((" ".join(row), (int(flow.x0), int(flow.y + tt), int(flow.x1), int(flow.y + b)),
                             "label"))
            flow.y += flow.lead + bh + flow.lead * 0.8
        elif r < 0.8:  # check boxes
            if not flow.need(flow.lead * 2):
                break
            n = int(rng.integers(2, 5))
            s = px * 0.8
            x = flow.x0
            parts = []
            for _ in range(n):
                label = t.word().capitalize()
                if x + s + px * 0.5 + f.getlength(label) > flow.x1:
                    break
                by = flow.y + px * 0.15
                cv.rect((x, by, x + s, by + s))
                if rng.random() < 0.4:
                    cv.line([(x + s * 0.2, by + s * 0.2), (x + s * 0.8, by + s * 0.8)], width=cv.stroke * 2)
                    cv.line([(x + s * 0.8, by + s * 0.2), (x + s * 0.2, by + s * 0.8)], width=cv.stroke * 2)
                cv.text(x + s + px * 0.5, flow.y, label, f, role="label", record=False)
                parts.append(label)
                x += s + px * 1.5 + f.getlength(label)
            l, tt, rr, b = f.getbbox(" ".join(parts))
            cv.lines.append((" ".join(parts), (int(flow.x0), int(flow.y + tt), int(x), int(flow.y + b)), "label"))
            flow.y += flow.lead * 1.8
        elif r < 0.93:  # a remarks box with a few typed lines
            h = flow.lead * int(rng.integers(3, 6))
            if not flow.need(h + flow.lead * 2):
                break
            cv.text(flow.x0, flow.y, t.title(1, 3) + ":", f, role="label")
            by = flow.y + flow.lead
            cv.rect((flow.x0, by, flow.x1, by + h))
            flow.y = by + px * 0.4
            save = flow.cols[0]
            flow.cols[0] = (save[0] + px * 0.5, save[1] - px * 0.5)
            flow.bottom, bottom = by + h, flow.bottom
            flow.paragraph(t.paragraph((1, 3)), justify=False)
            flow.full = False
            flow.bottom = bottom
            flow.cols[0] = save
            flow.y = by + h + flow.lead
        else:  # signature and date lines: the end of the form
            if not flow.need(flow.lead * 3):
                break
            flow.full = True
            y = flow.y + flow.lead * 1.5
            w = flow.width * 0.4
            cv.line([(flow.x0, y), (flow.x0 + w, y)])
            cv.line([(flow.x1 - w, y), (flow.x1, y)])
            cv.text(flow.x0, y + px * 0.3, "Signature", f, role="label", record=False)
            cv.text(flow.x1 - w, y + px * 0.3, "Date", f, role="label", record=False)
            l, tt, rr, b = f.getbbox("Signature Date")
            cv.lines.append(("Signature Date", (int(flow.x0), int(y + px * 0.3 + tt), int(flow.x1),
                                                int(y + px * 0.3 + b)), "label"))
            flow.y = y + flow.lead * 2
    _page_number(cv, flow, rng)


def _layout_drawing(cv, t, spec, rng):
    flow = _Flow(cv, t, spec, rng)
    flow.heading(0)
    while not flow.full:
        flow.figure()
        if rng.random() < 0.4 and not flow.full:
            flow.paragraph(t.paragraph((1, 3)))
    _page_number(cv, flow, rng)


def _layout_mixed(cv, t, spec, rng):
    flow = _Flow(cv, t, spec, rng)
    flow.heading(0)
    blocks = [flow.paragraph, flow.figure, flow.table, flow.paragraph, lambda: flow.heading(1),
              lambda: flow.bullets(int(rng.integers(2, 4)))]
    while not flow.full:
        blocks[int(rng.integers(len(blocks)))]()
    _page_number(cv, flow, rng)


_LAYOUT_FN = {
    "letter": _layout_letter,
    "one_column": _layout_one_column,
    "two_columns": lambda cv, t, spec, rng: _layout_one_column(cv, t, spec, rng, columns=2),
    "table": _layout_table,
    "form": _layout_form,
    "drawing": _layout_drawing,
    "mixed": _layout_mixed,
}


def render_page(spec: PageSpec) -> Page:
    """The clean page: crisp anti-aliased text and rules on the paper tone; no blur, noise, skew or JPEG yet."""
    if not os.path.isfile(spec.font):
        raise FileNotFoundError(f"font {spec.font} not found: run `make fonts` (Debian font packages)")
    cv = _Canvas(spec)
    rng = np.random.default_rng(spec.seed)
    _LAYOUT_FN[spec.layout](cv, _Text(rng), spec, rng)
    x0, y0 = cv.x0, cv.y0
    w, h = cv.size
    lines = tuple(TextLine(s, (b[0] - x0, b[1] - y0, b[2] - x0, b[3] - y0), role) for s, b, role in cv.lines
                  if b[0] >= x0 and b[1] >= y0 and b[2] <= x0 + w and b[3] <= y0 + h and s.strip())
    gray = np.asarray(cv.img, dtype=np.uint8).copy()
    return Page(gray=gray, text="\n".join(ln.text for ln in lines), font_px=spec.font_px, spec=spec, lines=lines)


# ------------------------------------------------------------------------------------------------ blur and scanner

BLUR_REGIONS = ("all", "top", "bottom", "band", "left", "right")
_EDGE = 0.45, 0.55  # where a half-page blur fades in: sharp before 45 % of the page, fully blurred after 55 %


def _ramp(n: int, a: float, b: float) -> np.ndarray:
    """Smooth step from 0 (before fraction a of n) to 1 (after fraction b)."""
    t = np.clip(((np.arange(n, dtype=np.float32) + 0.5) / n - a) / (b - a), 0, 1)
    return t * t * (3 - 2 * t)


def region_weight(n: int, region: str) -> np.ndarray:
    """How much of the blur each row (top/bottom/band) or column (left/right) gets, 0-1, length n."""
    a, b = _EDGE
    if region in ("bottom", "right"):
        return _ramp(n, a, b)
    if region in ("top", "left"):
        return 1 - _ramp(n, a, b)
    if region == "band":  # the middle third out of focus, soft edges
        return _ramp(n, 0.28, 0.38) * (1 - _ramp(n, 0.62, 0.72))
    if region == "all":
        return np.ones(n, np.float32)
    raise ValueError(f"unknown region {region!r}; expected one of {BLUR_REGIONS}")


def _reach(kind: str, extent: float) -> int:
    """How far (px) a blur kernel reaches: rows beyond a slice that still change its result."""
    if kind == "gaussian":
        return int(math.ceil(4 * extent)) + 2
    return int(math.ceil(extent)) + 2


def blur_page(gray: np.ndarray, kind: str | None, extent: float, angle: float = 0.0,
              region: str = "all") -> np.ndarray:
    """Blur a page (uint8 (H, W)) with ensemble.augment's kernels: 'gaussian' (sigma px), 'defocus' (disk radius
    px) or 'motion' (length px at ``angle`` degrees); over the whole page or one ``region`` of it (BLUR_REGIONS):
    'bottom' is a page whose lower half is out of focus (sharp above 45 % of its height, fully blurred below 55 %,
    a smooth step between), 'top' the reverse, 'band' the middle third, 'left'/'right' the halves.

    Only the rows or columns the blur reaches are filtered (a big page stays cheap); the result is the same as
    blurring the whole page and blending.
    """
    if kind is None or kind == "none" or extent <= 0:
        return gray.copy()
    if kind not in BLUR_KINDS:
        raise ValueError(f"unknown blur kind {kind!r}; expected one of {BLUR_KINDS}")
    if region == "all":
        return apply_blur(gray, kind, float(extent), float(angle))
    vertical = region in ("top", "bottom", "band")
    n = gray.shape[0] if vertical else gray.shape[1]
    w = region_weight(n, region)
    idx = np.nonzero(w > 0)[0]
    out = gray.copy()
    if idx.size == 0:
        return out
    r0, r1 = int(idx[0]), int(idx[-1]) + 1
    pad = _reach(kind, extent)
    s0, s1 = max(0, r0 - pad), min(n, r1 + pad)
    if vertical:
        slab = gray[s0:s1]
        blurred = apply_blur(slab, kind, float(extent), float(angle))[r0 - s0:r1 - s0]
        orig, ww = gray[r0:r1].astype(np.float32), w[r0:r1, None]
    else:
        slab = np.ascontiguousarray(gray[:, s0:s1])
        blurred = apply_blur(slab, kind, float(extent), float(angle))[:, r0 - s0:r1 - s0]
        orig, ww = gray[:, r0:r1].astype(np.float32), w[None, r0:r1]
    mix = np.clip(np.rint(orig + ww * (blurred.astype(np.float32) - orig)), 0, 255).astype(np.uint8)
    if vertical:
        out[r0:r1] = mix
    else:
        out[:, r0:r1] = mix
    return out


def scan_page(gray: np.ndarray, spec: PageSpec, rng: np.random.Generator | None = None) -> np.ndarray:
    """What the scanner does after the optics: skew (rotation about the centre, paper tone at the edges), sensor
    noise (Gaussian, sigma ``spec.noise`` grey levels) and a JPEG round trip (``spec.jpeg_quality``)."""
    rng = rng if rng is not None else np.random.default_rng([spec.seed, 0x5CA7])
    out = gray
    if spec.skew_deg:
        h, w = out.shape
        m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), spec.skew_deg, 1.0)
        out = cv2.warpAffine(out, m, (w, h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_CONSTANT,
                             borderValue=int(spec.paper))
    if spec.noise > 0:
        noisy = out.astype(np.float32)
        noisy += rng.standard_normal(out.shape, dtype=np.float32) * np.float32(spec.noise)
        out = np.clip(noisy, 0, 255, out=noisy).astype(np.uint8)  # truncation: mean shift < 0.5 grey level
    if spec.jpeg_quality is not None:
        ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, int(spec.jpeg_quality)])
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        out = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)
    return out if out is not gray else gray.copy()


def make_page(spec: PageSpec, blur: tuple | None = None, region: str = "all") -> Page:
    """Render, blur (``(kind, extent, angle)`` or ``(kind, extent)``; None for a sharp page), then scan.

    ``Page.gray`` is the final image; ``Page.lines`` keep the boxes of the clean render (before the skew).
    """
    page = render_page(spec)
    gray = page.gray
    norm = None
    if blur is not None and blur[0] not in (None, "none") and float(blur[1]) > 0:
        kind, extent = blur[0], float(blur[1])
        angle = float(blur[2]) if len(blur) > 2 else 0.0
        gray = blur_page(gray, kind, extent, angle, region)
        norm = (kind, extent, angle)
    gray = scan_page(gray, spec)
    return Page(gray=gray, text=page.text, font_px=page.font_px, spec=spec, lines=page.lines, blur=norm,
                region=region if norm else "all")


_DPIS = (150, 200, 240, 300, 400, 600)
_DPI_WEIGHTS = (0.08, 0.22, 0.12, 0.33, 0.17, 0.08)


def sample_spec(rng: np.random.Generator, split: str = "train", dpi: int | None = None) -> PageSpec:
    """A random page of that split (its fonts and layouts): dpi 150-600 (84 % in 200-400), 8-16 pt (mostly 9-12),
    paper 200-250, ink 10-70, skew within +-1.5 degrees, noise sigma 0-6, JPEG quality 70-95 or none (30 %)."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', not {split!r}")
    faces = fonts(split)
    regular = [p for p in faces if font_style(p) == (False, False)] or faces
    pool = regular if rng.random() < 0.8 else faces
    font = pool[int(rng.integers(len(pool)))]
    layouts = HELDOUT_LAYOUTS if split == "heldout" else TRAIN_LAYOUTS
    layout = layouts[int(rng.integers(len(layouts)))]
    if dpi is None:
        dpi = int(rng.choice(_DPIS, p=_DPI_WEIGHTS))
    size = float(np.round(rng.triangular(8.0, 10.5, 16.0) * 2) / 2)
    paper = int(rng.integers(200, 251))
    ink = int(rng.integers(10, 71))
    jpeg = None if rng.random() < 0.3 else int(rng.integers(70, 96))
    return PageSpec(font=font, size_pt=size, dpi=int(dpi), layout=layout, paper=paper, ink=ink,
                    skew_deg=float(rng.uniform(-1.5, 1.5)), noise=float(rng.uniform(0, 6)), jpeg_quality=jpeg,
                    seed=int(rng.integers(2**31)))


# ------------------------------------------------------------------------------------------------ labels

# The OCR boundary: a page is blurry when its blur extent exceeds K[kind] x font_px (the font size in pixels,
# size_pt * dpi / 72): the extent at which tesseract's character error rate rises 2 points above the sharp page's.
# Measured by benchmarks/bench_ocr.py on 2026-12-02 (tesseract 5.3.0, --psm 6; 6-12 pt at 150, 200 and 300 dpi,
# 17-50 px; 3 training and 3 held-out fonts; benchmarks/results/ocr_boundary.json, docs/documents.md). The fit
# through the origin holds per size within 0.080-0.088 (Gaussian), 0.122-0.141 (defocus) and 0.152-0.212 (motion).
# Motion is the worse of 0 degrees (along the lines, k 0.171) and 90 degrees (across them, k 0.192).
OCR_BOUNDARY_K: dict[str, float] = {"gaussian": 0.085, "defocus": 0.133, "motion": 0.171}
OCR_BOUNDARY_SOURCE = "benchmarks/bench_ocr.py, 2026-12-02, tesseract 5.3.0 --psm 6, CER > sharp + 2 points"


def blur_boundary(kind: str, font_px: float) -> float:
    """The blur extent (px) beyond which OCR suffers, for text of ``font_px`` pixels."""
    if kind not in OCR_BOUNDARY_K:
        raise ValueError(f"unknown blur kind {kind!r}; expected one of {tuple(OCR_BOUNDARY_K)}")
    return OCR_BOUNDARY_K[kind] * float(font_px)


def page_label(kind: str | None, extent: float, font_px: float, margin: float = 0.0) -> int | None:
    """1 blurry (OCR suffers), 0 sharp, None inside the guard band: within +-``margin`` (relative) of the boundary.

    No blur (kind None or "none", or extent 0) is 0 whatever the margin.
    """
    if kind is None or kind == "none" or extent <= 0:
        return 0
    b = blur_boundary(kind, font_px)
    if margin > 0 and abs(extent - b) <= margin * b:
        return None
    return 1 if extent > b else 0
