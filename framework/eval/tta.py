"""Test-time augmentation (``eval.tta``, ``predict.tta``): the mask logits of an image seen under flips and
quarter turns, each mapped back to the original frame and averaged.

Logits are averaged (not probabilities or masks), so the decision threshold keeps its meaning. A question with
direction words is asked as it reads in each view (``rewrite_directions``: after a left-right flip, "west" is
asked as "east"); a view that a question cannot follow (a quarter turn of "above") does not count for that
question. The frame is square (letterboxed), so every view has the frame's shape, and a map at output stride s
transforms exactly like the image when the frame size divides by s.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch

from framework.core.errors import ConfigError
from framework.core.model import ModelOutput, SegEarthModel
from framework.core.rows import ImagePass
from framework.data.augment import Geometry, rewrite_directions

# "flips": the identity, left-right, top-bottom and both (a half turn); "dihedral": those and a quarter turn of
# each, the 8 symmetries of the square. Keyed by the mode names the config accepts (framework.core.config).
TTA_VIEWS = {
    "none": (Geometry(),),
    "flips": tuple(Geometry(h, v) for v in (False, True) for h in (False, True)),
    "dihedral": tuple(Geometry(h, v, t) for t in (0, 1) for v in (False, True) for h in (False, True)),
}


def tta_views(mode: str | None) -> tuple[Geometry, ...]:
    """The views of a ``tta`` setting (``None`` = ``"none"``: the image as it is); the identity comes first."""
    key = "none" if mode is None else mode
    if key not in TTA_VIEWS:
        raise ConfigError(f"tta: unknown mode {mode!r}; choose one of {', '.join(TTA_VIEWS)}")
    return TTA_VIEWS[key]


def to_view(x: torch.Tensor, view: Geometry) -> torch.Tensor:
    """[..., H, W] in the original frame -> as seen in ``view`` (flips first, then counter-clockwise turns)."""
    if view.hflip:
        x = x.flip(-1)
    if view.vflip:
        x = x.flip(-2)
    return torch.rot90(x, view.quarter_turns, dims=(-2, -1)) if view.quarter_turns else x


def from_view(x: torch.Tensor, view: Geometry) -> torch.Tensor:
    """Inverse of ``to_view``: [..., H, W] seen in ``view`` -> in the original frame."""
    if view.quarter_turns:
        x = torch.rot90(x, -view.quarter_turns, dims=(-2, -1))
    if view.vflip:
        x = x.flip(-2)
    return x.flip(-1) if view.hflip else x


def questions_in_view(questions: Sequence[str], view: Geometry) -> tuple[list[str], torch.Tensor]:
    """(questions as they read in ``view``, bool [B]: which of them can be asked there at all)."""
    asked, valid = [], []
    for question in questions:
        try:
            asked.append(rewrite_directions(question, view))
            valid.append(True)
        except ValueError:
            asked.append(question)
            valid.append(False)
    return asked, torch.tensor(valid)


class ViewAverage:
    """Running mean over views of logits [B, h, w], each row over the views its question can follow."""

    def __init__(self) -> None:
        self._total: torch.Tensor | None = None
        self._count: torch.Tensor | None = None

    def add(self, logits: torch.Tensor, view: Geometry, valid: torch.Tensor) -> None:
        """``logits`` [B, h, w] in ``view``'s frame; ``valid`` bool [B] (rows left out of this view)."""
        weight = valid.to(logits.device, logits.dtype)
        back = from_view(logits, view) * weight[:, None, None]
        if self._total is None:
            self._total, self._count = back, weight
        else:
            self._total, self._count = self._total + back, self._count + weight

    def result(self) -> torch.Tensor:
        """The mean logits [B, h, w] in the original frame."""
        if self._total is None or self._count is None or bool((self._count == 0).any()):
            raise RuntimeError("ViewAverage: a row has no view (the identity view must come first and count)")
        return self._total / self._count[:, None, None]


def averaged_output(
    model: SegEarthModel,
    images: torch.Tensor,
    questions: Sequence[str],
    image_index: torch.Tensor | None,
    mode: str | None,
    see: Callable[[torch.Tensor, Geometry], ImagePass] | None = None,
) -> ModelOutput:
    """``model(images [U,3,S,S], questions, image_index)`` with its ``mask_logits`` [B,S/s,S/s] replaced by their
    mean over the views of ``mode``; the other fields are the identity view's (deep-supervision logits for a val
    loss). ``see(images in a view, view)`` replaces ``model.see`` (the image-blind control)."""
    views = tta_views(mode)
    see = see or (lambda view_images, _: model.see(view_images))
    out = model.answer(see(images, views[0]), list(questions), image_index)
    if len(views) == 1:
        return out
    mean = ViewAverage()
    mean.add(out.mask_logits, views[0], torch.ones(len(questions), dtype=torch.bool))
    for view in views[1:]:
        asked, valid = questions_in_view(questions, view)
        mean.add(model.answer(see(to_view(images, view), view), asked, image_index).mask_logits, view, valid)
    return dataclasses.replace(out, mask_logits=mean.result())
