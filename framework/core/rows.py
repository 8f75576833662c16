"""From images to questions: a batch holds U distinct images and B questions, question i asking about image
``image_index[i]``; what was computed once per image is gathered to the questions' rows here."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class ImagePass:
    """The question-independent work on U distinct images: the encoder's ``features`` [U,C_i,H/s_i,W/s_i], the
    compressor's ``visual_tokens`` [U,N,D_llm] (None without a compressor) and the mask head's ``pixels`` (its
    ``pixel_features``, batch first)."""

    features: list[torch.Tensor]
    visual_tokens: torch.Tensor | None
    pixels: Any

    @property
    def images(self) -> int:
        return self.features[0].shape[0]


def check_image_index(image_index: torch.Tensor | None, rows: int, images: int, device: torch.device) -> torch.Tensor:
    """``image_index`` [rows] as a long tensor on ``device`` (None: row i asks about image i), checked against the
    number of ``images``."""
    if image_index is None:
        if rows != images:
            raise ValueError(f"{rows} questions for {images} images and no image_index saying which is whose")
        return torch.arange(rows, device=device)
    if image_index.shape != (rows,):
        raise ValueError(f"image_index of shape {tuple(image_index.shape)} for {rows} questions")
    if rows and not 0 <= int(image_index.min()) <= int(image_index.max()) < images:
        raise ValueError(f"image_index values outside [0, {images}) for {images} images")
    return image_index.to(device=device, dtype=torch.long)


def take_rows(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``tensor[index]`` along the batch, without a copy where none is needed: the tensor itself when ``index`` is
    the identity, a stride-0 view when every row is the one image."""
    if tensor.shape[0] == 1:
        return tensor.expand(index.shape[0], *tensor.shape[1:])
    if index.shape[0] == tensor.shape[0] and torch.equal(index, torch.arange(index.shape[0], device=index.device)):
        return tensor
    return tensor[index]  # not index_select: indexing keeps a channels-last layout, which the convolutions after need


def map_tensors(fn: Callable[[torch.Tensor], torch.Tensor], value: Any) -> Any:
    """``value`` with ``fn`` applied to every tensor inside it (nested lists, tuples, mappings; transformers'
    ``ModelOutput`` is a mapping); anything else unchanged."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, Mapping):
        return type(value)(**{key: map_tensors(fn, item) for key, item in value.items()})
    if isinstance(value, (list, tuple)):
        return type(value)(map_tensors(fn, item) for item in value)
    return value
