"""Burned-in text found by OCR (Tesseract) and blanked, frame by frame.

Scanners burn text into ultrasound, angiography and screen captures as an overlay drawn at
(or near) the brightest value of the frame: :func:`text_layer` keeps the pixels in the top of
the frame's range (:func:`overlay_threshold`) that form glyph-sized shapes, as black on white,
enlarged (what Tesseract reads best; a frame without such shapes is not read at all).
Tesseract, reading sparse text, gives word boxes; each line's words, with a margin, are blanked
to 0 in the frame. A second reading of the cleaned frame decides: a word it still reads with at
least ``OcrSettings.min_confidence`` means the detector cannot clean this file, and so does a
cleaned area above ``OcrSettings.max_blanked_fraction`` of the frame (image content that reads
as text); such a file stays in quarantine with the reason.

Tesseract is called through its C API (``tesserocr``, whose wheel holds the library; one
engine per worker process), with the language data of Debian's ``tesseract-ocr-eng`` (or
``TESSDATA_PREFIX``); without them, candidates stay in quarantine and the reason says what to
install.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..errors import MedlibError


#: Where Debian (5, then 4) and others put Tesseract's language data; ``TESSDATA_PREFIX`` first.
TESSDATA_FOLDERS = ("/usr/share/tesseract-ocr/5/tessdata", "/usr/share/tesseract-ocr/4.00/tessdata",
                    "/usr/share/tessdata", "/usr/local/share/tessdata")


class OcrUnavailable(MedlibError):
    """Tesseract or its language data is missing; the message says how to install them."""


@dataclass(frozen=True)
class OcrSettings:
    """How burned-in text is detected and when a file is left to a person.

    Attributes:
        min_confidence: Tesseract's confidence (0–100) at or above which a word still read in
            a cleaned frame makes the file undecided (quarantined).
        margin: pixels added around each blanked line of text.
        max_blanked_fraction: a frame whose blanked area exceeds this share is undecided.
        overlay_level: the share of the frame's value range above which a pixel may belong
            to burned-in text (text is drawn at the brightest values).
        scale: how much frames are enlarged for Tesseract (small scanner fonts read better).
        language: Tesseract's language data.
    """

    min_confidence: float = 50.0
    margin: int = 3
    max_blanked_fraction: float = 0.25
    overlay_level: float = 0.8
    scale: int = 2
    language: str = "eng"


@dataclass(frozen=True)
class Blanked:
    """What cleaning one file did: the rectangles blanked per frame, and why it is undecided."""

    rectangles: tuple[tuple[int, int, int, int, int], ...]  # (frame, x, y, width, height)
    undecided: str | None = None


def tessdata(language: str = "eng") -> Path | None:
    """The folder holding ``<language>.traineddata``, or None."""
    folders = [os.environ["TESSDATA_PREFIX"]] if os.environ.get("TESSDATA_PREFIX") else []
    return next((Path(f) for f in [*folders, *TESSDATA_FOLDERS] if (Path(f) / f"{language}.traineddata").is_file()),
                None)


def tesseract_missing(language: str = "eng") -> str | None:
    """Why OCR cannot run here, or None."""
    if importlib.util.find_spec("tesserocr") is None:
        return "tesserocr is not installed (pip install 'medhub[edge]')"
    if tessdata(language) is None:
        return (f"Tesseract's language data {language}.traineddata is not installed "
                f"(apt-get install tesseract-ocr-{language}, or set TESSDATA_PREFIX)")
    return None


_ENGINES: dict[tuple[str, str], object] = {}


def _engine(language: str):
    """This process's Tesseract engine for ``language`` (made once: loading the model is slow)."""
    import tesserocr

    folder = str(tessdata(language))
    if (folder, language) not in _ENGINES:
        try:
            engine = tesserocr.PyTessBaseAPI(path=folder, lang=language, psm=tesserocr.PSM.SPARSE_TEXT)
        except RuntimeError as e:
            raise OcrUnavailable(f"Tesseract cannot load {language}.traineddata from {folder} ({e}): reinstall "
                                 f"tesseract-ocr-{language}") from None
        engine.SetVariable("tessedit_do_invert", "0")  # the layer is always dark text on white
        _ENGINES[folder, language] = engine
    return _ENGINES[folder, language]


def overlay_threshold(frame: np.ndarray, settings: OcrSettings) -> float:
    """The value above which a pixel of ``frame`` may belong to burned-in text."""
    values = frame.max(axis=-1) if frame.ndim == 3 else frame
    low, high = float(values.min()), float(values.max())
    return low + settings.overlay_level * (high - low) if high > low else np.inf


def text_layer(frame: np.ndarray, threshold: float, scale: int, max_glyph: int = 64) -> np.ndarray | None:
    """The pixels of ``frame`` at or above ``threshold`` that may be glyphs, black on white
    (uint8), enlarged by ``scale``; None when there are none (nothing for Tesseract to read).

    ``frame``: rows × columns (grayscale) or rows × columns × samples (colour; the brightest
    sample counts, so that yellow or green text is found too). Connected bright regions taller or
    wider than ``max_glyph`` pixels (bone, a bright organ, a frame border) are not glyphs, nor
    specks under 3 × 3 pixels (noise, the dot of an i): both are left out."""
    from scipy import ndimage

    values = frame.max(axis=-1) if frame.ndim == 3 else frame
    ink = values >= threshold
    labels, count = ndimage.label(ink)
    if count == 0:
        return None
    sizes = [(s[0].stop - s[0].start, s[1].stop - s[1].start) for s in ndimage.find_objects(labels)]
    not_glyph = np.array([False] + [h > max_glyph or w > max_glyph or (h < 3 and w < 3) for h, w in sizes])
    ink &= ~not_glyph[labels]
    if not ink.any():
        return None
    layer = np.where(ink, 0, 255).astype(np.uint8)
    return np.kron(layer, np.ones((scale, scale), np.uint8))


class Word(NamedTuple):
    """A word Tesseract read, in the text layer's pixels (the text stays in memory: never reported)."""

    line: tuple[int, int, int, int]  # the box of its line of text
    x: int
    y: int
    width: int
    height: int
    confidence: float
    text: str


def read_words(layer: np.ndarray, settings: OcrSettings) -> list[Word]:
    """Tesseract's words in a text layer."""
    import tesserocr
    from PIL import Image

    engine = _engine(settings.language)
    engine.SetImage(Image.fromarray(layer))
    engine.Recognize()
    words, word, line = [], tesserocr.RIL.WORD, tesserocr.RIL.TEXTLINE
    iterator = engine.GetIterator()
    for item in tesserocr.iterate_level(iterator, word) if iterator is not None else ():
        try:
            text, box = item.GetUTF8Text(word) or "", item.BoundingBox(word)
        except RuntimeError:  # "No text returned": an empty page
            continue
        if box is not None and any(c.isalnum() for c in text):
            x0, y0, x1, y1 = box
            words.append(Word(item.BoundingBox(line) or box, x0, y0, x1 - x0, y1 - y0, float(item.Confidence(word)),
                              text))
    return words


def line_boxes(words: list[Word], settings: OcrSettings, shape: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """One rectangle (x, y, width, height) in frame pixels per line of words, with the margin."""
    lines: dict[tuple[int, int, int, int], list[int]] = {}
    for line, x, y, w, h, _, _ in words:
        box = lines.setdefault(line, [x, y, x + w, y + h])
        box[:] = [min(box[0], x), min(box[1], y), max(box[2], x + w), max(box[3], y + h)]
    s, m = settings.scale, settings.margin
    out = []
    for x0, y0, x1, y1 in lines.values():
        left, top = max(0, x0 // s - m), max(0, y0 // s - m)
        right, bottom = min(shape[1], -(-x1 // s) + m), min(shape[0], -(-y1 // s) + m)
        out.append((left, top, right - left, bottom - top))
    return out


def clean_frames(frames: np.ndarray, settings: OcrSettings = OcrSettings()) -> Blanked:
    """Find and blank burned-in text in ``frames`` (frames × rows × columns [× samples]), in
    place.

    Raises:
        OcrUnavailable: tesserocr or the language data is missing.
    """
    missing = tesseract_missing(settings.language)
    if missing:
        raise OcrUnavailable(missing)
    rectangles: list[tuple[int, int, int, int, int]] = []
    for index, frame in enumerate(frames):
        threshold = overlay_threshold(frame, settings)  # of the frame as it came: cleaning lowers its top
        layer = text_layer(frame, threshold, settings.scale)
        if layer is None:
            continue
        boxes = line_boxes(read_words(layer, settings), settings, frame.shape[:2])
        area = np.zeros(frame.shape[:2], bool)
        for x, y, w, h in boxes:
            frame[y:y + h, x:x + w, ...] = 0
            area[y:y + h, x:x + w] = True
            rectangles.append((index, x, y, w, h))
        if area.mean() > settings.max_blanked_fraction:
            return Blanked(tuple(rectangles), f"frame {index}: {area.mean():.0%} of the frame reads as text "
                                              f"(more than {settings.max_blanked_fraction:.0%})")
        layer = text_layer(frame, threshold, settings.scale) if boxes else None
        if layer is not None:
            left = [w for w in read_words(layer, settings) if w.confidence >= settings.min_confidence]
            if left:
                return Blanked(tuple(rectangles), f"frame {index}: {len(left)} word(s) still read after cleaning "
                                                  f"with confidence ≥ {settings.min_confidence:g}")
    return Blanked(tuple(rectangles))
