"""Training augmentation that keeps the question true: flips, quarter turns, zoom and colour jitter on the native
image and mask (albumentations), with the direction words of the question and answer rewritten to match.

Config ``data.augment`` (None or ``{}`` = no augmentation; only the training split is ever augmented)::

    hflip: 0.5          # probability of a left-right flip
    vflip: 0.5          # probability of a top-bottom flip
    rot90: 0.5          # probability of RandomRotate90: 0-3 counter-clockwise quarter turns, each 1/4
    color: 0.3          # probability of a mild colour jitter (brightness/contrast/saturation 0.2, hue 0.02)
    scale: [0.8, 1.2]   # zoom about the centre by a factor drawn from the range, always; size is kept
    translate: 0.0      # shift the view by up to this fraction of the size along each axis (with the zoom)
    keep_target: true   # a zoom/shift that would leave the target outside the view is undone; false: the
                        # sample becomes a no-target sample (empty mask, the no-target answer)
    directional: rewrite  # or "skip": no geometric change for text with direction words (colour still applies)

Image up is north. Directions are rewritten word by word, in the text's own words and capitalisation:
north/south/east/west (also compounds ``north-east``/``northeast``/``north east`` and the suffixes -ern, -erly,
-ernmost, -ward(s)), top/bottom/left/right (with compounds ``top-left``, ``upper right``), topmost/leftmost/...,
upper/lower, uppermost/lowermost, above/below, horizontal(ly)/vertical(ly) and clockwise/counterclockwise
(``anticlockwise`` and hyphenated spellings are read, ``counterclockwise`` is written). Matching is by whole
word, case-insensitive, so "leftover", "bottomland" and "Northampton" are left alone. The idioms "on top of",
"right of way", "right angle(d)" and "all right" are not directions.

Words that only exist for the vertical axis (upper, lower, uppermost, lowermost, above, below) have no
one-word counterpart after a quarter turn, so a sample whose text has one is flipped and zoomed but not
turned. Limitations: proper nouns ("West Bay", "North Sea") and other non-directional uses ("the road left
the town") are rewritten like directions; "up", "down" and "beside" are not treated as directions.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from framework.core.config import check_augment

Vector = tuple[int, int]  # (down, right) in image axes, each -1, 0 or 1

# One table per family of interchangeable words: a rewrite stays inside the word's family.
_CARDINAL: dict[str, Vector] = {"north": (-1, 0), "south": (1, 0), "east": (0, 1), "west": (0, -1)}
_EDGE: dict[str, Vector] = {"top": (-1, 0), "bottom": (1, 0), "left": (0, -1), "right": (0, 1)}
_MOST: dict[str, Vector] = {"topmost": (-1, 0), "bottommost": (1, 0), "leftmost": (0, -1), "rightmost": (0, 1)}
_UPPER: dict[str, Vector] = {"upper": (-1, 0), "lower": (1, 0)}
_UPPERMOST: dict[str, Vector] = {"uppermost": (-1, 0), "lowermost": (1, 0)}
_ABOVE: dict[str, Vector] = {"above": (-1, 0), "below": (1, 0)}
_AXIS: dict[str, Vector] = {"horizontal": (0, 1), "vertical": (1, 0)}
_AXIS_LY: dict[str, Vector] = {"horizontally": (0, 1), "vertically": (1, 0)}
_FAMILIES = (_CARDINAL, _EDGE, _MOST, _UPPER, _UPPERMOST, _ABOVE, _AXIS, _AXIS_LY)
_FAMILY_OF = {word: family for family in _FAMILIES for word in family}
_UNSIGNED = (_AXIS, _AXIS_LY)  # an axis has no sign: a half turn leaves "horizontal" horizontal

_CARDINAL_SUFFIX = r"(?:ernmost|ern|erly|wards|ward)"
_DIRECTIONAL = re.compile(
    r"\b(?:"
    r"(?P<idiom>on top of|right[- ]of[- ]way|right[- ]angled|right angles?|all right)"
    rf"|(?P<cv>north|south)(?P<csep>[- ]?)(?P<ch>east|west)(?P<csuf>{_CARDINAL_SUFFIX})?"
    rf"|(?P<c>north|south|east|west)(?P<suf>{_CARDINAL_SUFFIX})?"
    r"|(?P<sv>top|bottom|upper|lower)(?P<ssep>[- ])(?P<sh>left|right)"
    r"|(?P<clock>(?:counter|anti)-?clockwise|clockwise)"
    r"|(?P<word>" + "|".join(sorted((w for f in _FAMILIES[1:] for w in f), key=len, reverse=True)) + ")"
    r")\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Geometry:
    """A symmetry of the image plane, applied in the order of the pipeline: left-right flip, top-bottom flip,
    then ``quarter_turns`` x 90° counter-clockwise (``np.rot90`` and albumentations' RandomRotate90 ``factor``:
    the top row becomes the left column, so north turns west)."""

    hflip: bool = False
    vflip: bool = False
    quarter_turns: int = 0

    def move(self, vector: Vector) -> Vector:
        """Where a direction (down, right) points after the transform."""
        down, right = vector
        if self.hflip:
            right = -right
        if self.vflip:
            down = -down
        for _ in range(self.quarter_turns % 4):
            down, right = -right, down
        return down, right

    @property
    def mirrors(self) -> bool:
        """True when clockwise becomes counter-clockwise."""
        return self.hflip != self.vflip


def _cased(word: str, like: str) -> str:
    if len(like) > 1 and like.isupper():
        return word.upper()
    return word[0].upper() + word[1:] if like[0].isupper() else word


def _word_for(family: dict[str, Vector], vector: Vector) -> str | None:
    return next((w for w, v in family.items() if v == vector), None)


def _single(word: str, geometry: Geometry) -> str | None:
    family = _FAMILY_OF[word.lower()]
    moved = geometry.move(family[word.lower()])
    if family in _UNSIGNED:
        moved = (abs(moved[0]), abs(moved[1]))
    new = _word_for(family, moved)
    return None if new is None else _cased(new, word)


def _compound(vertical: str, sep: str, horizontal: str, geometry: Geometry) -> str:
    """A corner stays a corner: each slot keeps its word family and takes its new component."""
    v_family, h_family = _FAMILY_OF[vertical.lower()], _FAMILY_OF[horizontal.lower()]
    down, right = geometry.move((v_family[vertical.lower()][0], h_family[horizontal.lower()][1]))
    new_v, new_h = _word_for(v_family, (down, 0)), _word_for(h_family, (0, right))
    assert new_v is not None and new_h is not None  # every family with a compound has both signs of its axis
    return _cased(new_v, vertical) + sep + _cased(new_h, horizontal)


def _clock(word: str, geometry: Geometry) -> str:
    if not geometry.mirrors:
        return word
    return _cased("counterclockwise" if word.lower() == "clockwise" else "clockwise", word)


def _rewrite_match(m: re.Match, geometry: Geometry) -> str | None:
    if m["idiom"]:
        return m[0]
    if m["cv"]:
        return _compound(m["cv"], m["csep"], m["ch"], geometry) + (m["csuf"] or "")
    if m["c"]:
        new = _single(m["c"], geometry)
        return None if new is None else new + (m["suf"] or "")
    if m["sv"]:
        return _compound(m["sv"], m["ssep"], m["sh"], geometry)
    if m["clock"]:
        return _clock(m["clock"], geometry)
    return _single(m["word"], geometry)


def _rewrite(text: str, geometry: Geometry) -> str | None:
    pieces, last = [], 0
    for m in _DIRECTIONAL.finditer(text):
        new = _rewrite_match(m, geometry)
        if new is None:
            return None
        pieces += [text[last : m.start()], new]
        last = m.end()
    return "".join(pieces) + text[last:]


def has_directional_words(text: str) -> bool:
    """True when ``text`` names a direction or position in the image (see the module docstring)."""
    return any(not m["idiom"] for m in _DIRECTIONAL.finditer(text))


def follows_quarter_turns(text: str) -> bool:
    """True when every direction word of ``text`` has a one-word counterpart after a 90° turn."""
    return _rewrite(text, Geometry(quarter_turns=1)) is not None


def rewrite_directions(text: str, geometry: Geometry) -> str:
    """``text`` with its direction words as they read after ``geometry``; a ValueError when a word has no
    counterpart (an "above" after a quarter turn: check with ``follows_quarter_turns``)."""
    new = _rewrite(text, geometry)
    if new is None:
        raise ValueError(f"{text!r}: a direction word has no counterpart after {geometry}")
    return new


def _applied_geometry(applied: list[tuple[str, dict[str, Any]]]) -> Geometry:
    names = {name: params for name, params in applied}
    turns = names["RandomRotate90"]["factor"] if "RandomRotate90" in names else 0
    return Geometry("HorizontalFlip" in names, "VerticalFlip" in names, turns)


class QuestionAwareAugment:
    """Augments one native sample: ``image`` uint8 [H,W,3] and ``mask`` [H,W] in, either bool or uint8 instance
    ids (0 = not a target; nearest neighbour keeps every id an id), the same out in the same dtype (H and W swap
    after an odd quarter turn), with the question and answer rewritten to the new geometry.

    Every random draw comes from ``seed``, so equal seeds give equal samples. A zoom or shift that would crop the
    whole target away leaves the sample as it was (``keep_target``) or returns the empty mask.
    """

    def __init__(
        self,
        hflip: float = 0.0,
        vflip: float = 0.0,
        rot90: float = 0.0,
        color: float = 0.0,
        scale: list[float] | None = None,
        translate: float = 0.0,
        keep_target: bool = True,
        directional: str = "rewrite",
    ) -> None:
        options = check_augment(
            dict(hflip=hflip, vflip=vflip, rot90=rot90, color=color, scale=scale, translate=translate,
                 keep_target=keep_target, directional=directional)
        )
        self.hflip, self.vflip, self.rot90, self.color = (options[k] for k in ("hflip", "vflip", "rot90", "color"))
        self.scale, self.translate = options["scale"], options["translate"]
        self.keep_target, self.directional = options["keep_target"], options["directional"]
        self._full = self._compose(flips=True, quarter_turns=True, zoom=True)
        self._without_quarter_turns = self._compose(flips=True, quarter_turns=False, zoom=True)
        self._colour_only = self._compose(flips=False, quarter_turns=False, zoom=False)

    def _compose(self, flips: bool, quarter_turns: bool, zoom: bool) -> Any:
        # Imported here: albumentations adds most of a second to every import of the data package.
        import albumentations as A
        import cv2

        steps: list[Any] = []
        if flips:
            steps += [A.HorizontalFlip(p=self.hflip), A.VerticalFlip(p=self.vflip)]
        if quarter_turns:
            steps.append(A.RandomRotate90(p=self.rot90))
        if zoom and (self.scale is not None or self.translate):
            shift = (-self.translate, self.translate)
            steps.append(
                A.Affine(
                    scale=self.scale if self.scale is not None else 1.0,
                    translate_percent={"x": shift, "y": shift},
                    keep_ratio=True,
                    border_mode=cv2.BORDER_CONSTANT,
                    fill=0,
                    fill_mask=0,
                    mask_interpolation=cv2.INTER_NEAREST,
                    p=1.0,
                )
            )
        steps.append(A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02, p=self.color))
        return A.Compose(steps, save_applied_params=True)

    def _pipeline(self, question: str, answer: str) -> Any:
        if not (has_directional_words(question) or has_directional_words(answer)):
            return self._full
        if self.directional == "skip":
            return self._colour_only
        if follows_quarter_turns(question) and follows_quarter_turns(answer):
            return self._full
        return self._without_quarter_turns

    def __call__(
        self, image: np.ndarray, mask: np.ndarray, question: str, answer: str, seed: int
    ) -> tuple[np.ndarray, np.ndarray, str, str]:
        """(image uint8 [H',W',3], mask [H',W'] in ``mask``'s dtype, question, answer) after one random draw."""
        pipeline = self._pipeline(question, answer)
        # One shared generator pair: Compose.set_random_seed gives every transform its own generator seeded
        # alike, so equal probabilities would fire together (both flips or neither).
        pipeline.set_random_state(np.random.default_rng(seed), random.Random(seed))
        out = pipeline(image=image, mask=mask.astype(np.uint8))
        new_mask = out["mask"].astype(mask.dtype)
        if self.keep_target and mask.any() and not new_mask.any():
            return image, mask, question, answer
        geometry = _applied_geometry(out["applied_transforms"])
        return (
            np.ascontiguousarray(out["image"]),
            np.ascontiguousarray(new_mask),
            rewrite_directions(question, geometry),
            rewrite_directions(answer, geometry),
        )


def augment_from_config(cfg: dict[str, Any] | None) -> QuestionAwareAugment | None:
    """The augmentation of ``data.augment``; None when it is empty. Unknown keys and bad values: ConfigError
    (``framework.core.config.check_augment``)."""
    options = check_augment(cfg)
    return None if options is None else QuestionAwareAugment(**options)
