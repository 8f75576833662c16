"""The image-blind control of ``segearth test`` (``eval.image_blind_control``): every question is answered with
the visual tokens of another image of the split (``framework.data.datamodule.ForeignImages`` chooses it), while
the projector and the mask head still see the true image's features. The drop from the true score is what the
LLM's reading of the image is worth; a model whose score does not drop answers from the question and the mask head
alone."""

from __future__ import annotations

from collections.abc import Callable

import torch

from framework.core.model import SegEarthModel
from framework.core.rows import ImagePass
from framework.data.augment import Geometry
from framework.eval.tta import to_view


def image_blind_see(
    model: SegEarthModel, foreign_images: torch.Tensor
) -> Callable[[torch.Tensor, Geometry], ImagePass]:
    """``see(images [U,3,S,S] in a test-time view, view)`` for ``averaged_output``: ``model.see`` of the images
    with the visual tokens of ``foreign_images`` [U,3,S,S] (row u: the image that stands in for image u), seen in
    the same view."""

    def see(images: torch.Tensor, view: Geometry) -> ImagePass:
        return model.see(images, visual_tokens=model.visual_tokens(to_view(foreign_images, view)))

    return see
