"""Inference on your own imagery: ``load_model(...)`` then ``model.predict(image, question)``.

``load_model`` accepts a bundle folder (``segearth export``), a registered model ``models:/NAME@ALIAS``, a run
folder (its ``checkpoints/best.ckpt``) or a ``.ckpt`` file. An image is a path (GeoTIFFs are read with rasterio and
keep their georeference), a uint8 array [H,W,3] / [H,W] or a PIL image; bands and scaling follow the experiment's
``data.bands`` / ``data.scale``.

Each image is cut into tiles (``predict`` config section: ``tiling``, ``tile_size``, ``overlap``, ``tile_batch``;
one tile = the whole image when it is small enough or ``tiling: never``); each tile is letterboxed to the training
frame exactly as in training, its logits are resampled back onto the tile's native pixels and blended where tiles
overlap (``framework.infer.tiling``). The image pass (encoder, compressor, the mask head's pixel features) runs once
per tile, whatever the number of questions asked of the image; the questions then run in batches over it. ``predict.tta`` (``flips``, ``dihedral``) sees
each tile in 4 or 8 views and averages their logits (``framework.eval.tta``): that many encoder passes per tile.

Every answer also lists its ``targets``, the objects it is made of, most probable first, each with its mask at the
image's native size, inside the answer's mask and without overlaps (a pixel two targets claim stays with the more
probable one; a target left without pixels is dropped). ``predict.targets``: ``auto`` (default) takes a model's
target queries (``model.readout: {name: targets}``) on a one-tile image, scored by their objectness probability,
and otherwise the connected regions (8-connected) of the answer mask, scored by their mean probability (a tiled
scene: a target cut by a tile border has no one query that answers for it); ``regions`` always the regions.

A model trained with the LM loss on answers (``loss.lm_weight`` > 0 and an LLM answer template) also answers in
words: the LLM's greedy text (at most ``predict.answer_tokens`` tokens) from the image's own pass when it is one tile,
or from the whole scene letterboxed into one frame when it is tiled. Otherwise ``answer`` is None and
``Predictor.answer_note`` says why.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from framework.core.config import PredictSchema, check_predict
from framework.core.errors import ConfigError, DataError, UserError
from framework.core.model import ModelOutput
from framework.core.readout import chosen_targets
from framework.core.target import decide
from framework.core.weights import load_checkpoint_model
from framework.data.geo import GeoReference, is_tiff, read_geotiff
from framework.data.images import Raster, raster_to_rgb, read_image
from framework.data.transforms import letterbox_image
from framework.eval.postprocess import disjoint_masks, region_labels, resample_to_original
from framework.eval.tta import ViewAverage, questions_in_view, to_view, tta_views
from framework.infer.bundle import resolve_bundle
from framework.infer.tiling import TileBlender

ImageSource = str | Path | np.ndarray | Image.Image


@dataclass
class LoadedImage:
    """``pixels`` uint8 [H,W,3]; ``name`` for output files; ``path`` when read from a file; ``geo`` for a
    georeferenced raster."""

    pixels: np.ndarray
    name: str
    path: Path | None = None
    geo: GeoReference | None = None


@dataclass
class PredictedTarget:
    """One target of an answer, whose pixels are those of ``Prediction.target_ids`` equal to its index + 1: ``score``
    in [0, 1], ``area_px`` and ``area_m2`` (georeferenced in a metric CRS, else None)."""

    score: float
    area_px: int
    area_m2: float | None

    def record(self, index: int) -> dict[str, Any]:
        return {"id": index, "score": round(self.score, 6), "area_px": self.area_px,
                "area_m2": None if self.area_m2 is None else round(self.area_m2, 3)}


@dataclass
class Prediction:
    """One answer. ``mask`` bool [H,W] and ``probability`` float32 [H,W] at the image's native size; ``score``:
    mean probability over the mask (the reference's mask score; 0 for an empty mask); ``area_m2`` when the image
    is georeferenced in a metric CRS; ``answer``: the LLM's answer text (None: the model was not trained to answer
    in words, ``Predictor.answer_note`` says why). ``no_target``: the
    answer is "nothing here" (its mask is empty: decided so by the model's target decision, or simply empty);
    ``target_score``: the target decision's probability that there is a target (the largest over the tiles of a
    tiled scene; None: the model has no target decision). ``targets``: the answer's targets (module docstring), and
    ``target_ids`` uint16 [H,W] their pixels (0 = none, i + 1 = ``targets[i]``; uint32 past 65,535 targets)."""

    question: str
    mask: np.ndarray
    probability: np.ndarray
    score: float
    area_px: int
    area_m2: float | None
    answer: str | None
    image: LoadedImage = field(repr=False)
    tiles: int = 1
    target_score: float | None = None
    targets: list[PredictedTarget] = field(default_factory=list)
    target_ids: np.ndarray | None = field(default=None, repr=False)

    @property
    def no_target(self) -> bool:
        return self.area_px == 0

    def record(self) -> dict[str, Any]:
        """The JSON-serialisable summary (no arrays)."""
        height, width = self.mask.shape
        return {
            "image": str(self.image.path) if self.image.path else self.image.name,
            "question": self.question,
            "score": round(self.score, 6),
            "area_px": self.area_px,
            "area_m2": None if self.area_m2 is None else round(self.area_m2, 3),
            "answer": self.answer,
            "no_target": self.no_target,
            "target_score": None if self.target_score is None else round(self.target_score, 6),
            "targets": [t.record(i) for i, t in enumerate(self.targets)],
            "height": height,
            "width": width,
            "tiles": self.tiles,
            "crs": None if self.image.geo is None else self.image.geo.describe(),
        }


def predict_options(cfg: dict, **overrides: Any) -> dict[str, Any]:
    """The ``predict`` section of ``cfg`` (defaults for configs saved before it existed) with ``overrides``
    (None values ignored), checked."""
    options = {**dataclasses.asdict(PredictSchema()), **cfg.get("predict", {})}
    options.update({k: v for k, v in overrides.items() if v is not None})
    check_predict(options)
    return options


class Predictor:
    """A trained model ready for inference (see the module docstring). ``batch_size``: (tile, question) pairs per
    forward pass after the shared encoder step; ``target_threshold``: the target decision's threshold (None: the
    model config's ``eval.target_threshold``)."""

    def __init__(
        self,
        model,
        config: dict,
        source: str = "",
        device: str = "cpu",
        batch_size: int = 8,
        target_threshold: float | None = None,
        **options: Any,
    ) -> None:
        self.model = model.to(device).eval().requires_grad_(False)  # also enables the LLM's question cache
        self.config = config
        self.source = source
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.image_size = config["data"]["image_size"]
        self.bands = config["data"].get("bands")
        self.scale = config["data"].get("scale", "auto")
        self.threshold = config["eval"]["threshold"]
        self.target_threshold = config["eval"]["target_threshold"] if target_threshold is None else target_threshold
        if not 0 <= self.target_threshold <= 1:
            raise ConfigError(f"target threshold: expected a probability in [0, 1], got {self.target_threshold}")
        self.options = predict_options(config, **options)
        self.query_targets = model.has_target_queries and self.options["targets"] == "auto"
        model.check_image_size(self.image_size)
        why = model.why_no_answer_text(config)
        if why is not None:
            self.answer_note: str | None = f"this model was not trained to answer in words ({why}): answers are null"
        elif self.options["answer_tokens"] == 0:
            self.answer_note = "predict.answer_tokens is 0: answers are null"
        else:
            self.answer_note = None

    # ------------------------------------------------------------------ inputs
    def load_image(self, source: ImageSource) -> LoadedImage:
        """A path, uint8 array or PIL image as RGB pixels (+ georeference for GeoTIFFs); too small is an error."""
        if isinstance(source, (str, Path)):
            path = Path(source)
            if not path.is_file():
                raise DataError(f"{path}: image not found")
            if is_tiff(path):
                pixels, geo = read_geotiff(path, self.bands, self.scale)
            else:
                pixels, geo = read_image(path, self.bands, self.scale), None
            image = LoadedImage(pixels, path.stem, path, geo)
        elif isinstance(source, Image.Image):
            array = np.asarray(source)
            alpha = source.mode in ("LA", "RGBA")
            pixels = raster_to_rgb(Raster(array, alpha=alpha), Path("<PIL image>"), self.bands, self.scale)
            image = LoadedImage(pixels, "image")
        elif isinstance(source, np.ndarray):
            image = LoadedImage(raster_to_rgb(Raster(source), Path("<array>"), self.bands, self.scale), "array")
        else:
            raise UserError(f"image: expected a path, a numpy array or a PIL image, got {type(source).__name__}")
        height, width = image.pixels.shape[:2]
        stride = self.model.max_stride
        if min(height, width) < stride:
            raise DataError(
                f"{image.path or image.name}: {width}x{height} pixels is too small: the encoder's coarsest stride is "
                f"{stride} px, so both sides must be at least {stride}"
            )
        return image

    def _visual_tokens(self) -> int:
        if self.model.compressor is None:
            return 0
        side = self.image_size // self.model.encoder.strides[self.model.compressor_level]
        return self.model.compressor.num_tokens(side, side)

    def check_question(self, question: str) -> str:
        """The question, stripped; empty or longer than the LLM's context is a DataError."""
        if not isinstance(question, str) or not question.strip():
            raise DataError("empty question: ask something about the image, e.g. 'Where could a seaplane land?'")
        question = question.strip()
        llm = self.model.llm
        limit = getattr(llm, "max_positions", None)
        if limit is not None and hasattr(llm, "prompt_length"):
            length = llm.prompt_length(question, self._visual_tokens())
            if length > limit:
                raise DataError(
                    f"question too long: its prompt is {length} tokens, the LLM's context is {limit} "
                    f"({len(question)} characters: {question[:60]!r}...)"
                )
        return question

    # ------------------------------------------------------------------ inference
    def predict(self, image: ImageSource, question: str | Sequence[str]) -> Prediction | list[Prediction]:
        """One question -> one ``Prediction``; a list of questions -> a list (the image is encoded once)."""
        questions = [question] if isinstance(question, str) else list(question)
        results = self.predict_many([(image, q) for q in questions])
        return results[0] if isinstance(question, str) else results

    def predict_many(
        self, items: Sequence[tuple[ImageSource, str]], progress: bool | None = None
    ) -> list[Prediction]:
        """``(image, question)`` pairs -> predictions in the same order. Pairs naming the same image (the same
        path or object) share one encoding; tiles of consecutive images are batched together."""
        return list(self.iter_predictions(items, progress))

    def iter_predictions(
        self, items: Sequence[tuple[ImageSource, str]], progress: bool | None = None
    ) -> Iterator[Prediction]:
        """As ``predict_many``, yielding each prediction as soon as its image is done (memory: the images in
        flight, not the whole list). Every question is checked before any image is read."""
        groups: dict[Any, tuple[ImageSource, list[tuple[int, str]]]] = {}
        for index, (image, question) in enumerate(items):
            key = str(Path(image).resolve()) if isinstance(image, (str, Path)) else id(image)
            groups.setdefault(key, (image, []))[1].append((index, self.check_question(question)))
        done: dict[int, Prediction] = {}
        next_index = 0
        for predictions in self._run(list(groups.values()), progress):
            for index, prediction in predictions:
                done[index] = prediction
            while next_index in done:
                yield done.pop(next_index)
                next_index += 1

    def tile_layout(self, image: LoadedImage) -> tuple[int, int]:
        """(tile side, overlap) in native pixels that ``image`` is cut with: an overlap only when it is larger than
        one tile."""
        height, width = image.pixels.shape[:2]
        tile = self._tile_size(image)
        return tile, round(self.options["overlap"] * tile) if tile < max(height, width) else 0

    def _tile_size(self, image: LoadedImage) -> int:
        height, width = image.pixels.shape[:2]
        tile = self.options["tile_size"] or self.image_size
        mode = self.options["tiling"]
        if mode == "never" or (mode == "auto" and max(height, width) <= tile):
            return max(height, width)
        if tile < self.model.max_stride:
            raise ConfigError(
                f"predict.tile_size {tile} is smaller than the encoder's coarsest stride {self.model.max_stride}"
            )
        return tile

    def _run(
        self, groups: list[tuple[ImageSource, list[tuple[int, str]]]], progress: bool | None
    ) -> Iterator[list[tuple[int, Prediction]]]:
        """Per image (in order), its (index, prediction) pairs; images are read when their first tile is due."""
        from tqdm.auto import tqdm

        batch_tiles = self.options["tile_batch"]
        pending: list[tuple[int, int]] = []  # (group, tile index) waiting for the next encoder batch
        scenes: dict[int, _Scene] = {}
        bar = tqdm(desc="tiles", unit="tile", disable=None if progress is None else not progress, leave=False)
        with torch.inference_mode(), bar:
            for g, (source, asked) in enumerate(groups):
                image = self.load_image(source)
                height, width = image.pixels.shape[:2]
                tile, overlap = self.tile_layout(image)
                blenders = [TileBlender(height, width, tile, overlap) for _ in asked]
                scenes[g] = _Scene(image, blenders, len(blenders[0].tiles), [None] * len(asked), [None] * len(asked),
                                   [None] * len(asked))
                bar.total = (bar.total or 0) + scenes[g].left
                for t in range(scenes[g].left):
                    pending.append((g, t))
                    if len(pending) == batch_tiles:
                        yield from self._step(pending, groups, scenes, bar)
                        pending = []
            if pending:
                yield from self._step(pending, groups, scenes, bar)

    def _step(self, pending, groups, scenes, bar) -> Iterator[list[tuple[int, Prediction]]]:
        """Encode one batch of tiles, ask every question of their images, blend; yield finished images."""
        frames, boxes, sizes = [], [], []
        for g, t in pending:
            scene = scenes[g]
            tile = scene.blenders[0].tiles[t]
            crop = scene.image.pixels[tile.top : tile.top + tile.height, tile.left : tile.left + tile.width]
            frame, box = letterbox_image(Image.fromarray(crop), self.image_size)
            frames.append(frame)
            boxes.append(box)
            sizes.append((tile.height, tile.width))
        batch = torch.stack(frames).to(self.device)
        pairs = [(row, q) for row, (g, _) in enumerate(pending) for q in range(len(groups[g][1]))]
        chunks = [pairs[start : start + self.batch_size] for start in range(0, len(pairs), self.batch_size)]
        means = [ViewAverage() for _ in chunks]
        targets: list[ModelOutput | None] = [None] * len(chunks)  # the identity view's target queries, per chunk
        for v, view in enumerate(tta_views(self.options["tta"])):
            seen = self.model.see(to_view(batch, view))  # once per tile, for every question of its image
            if v == 0 and self.answer_note is None:  # the identity view: a one-tile image's answer text
                for row, (g, _) in enumerate(pending):
                    if len(scenes[g].blenders[0].tiles) == 1:
                        self._answer(scenes[g], groups[g][1], seen, row)
            for c, (chunk, mean) in enumerate(zip(chunks, means, strict=True)):
                rows = torch.tensor([row for row, _ in chunk], device=self.device)
                asked, valid = questions_in_view([groups[pending[row][0]][1][q][1] for row, q in chunk], view)
                out = self.model.answer(seen, asked, rows)
                mean.add(out.mask_logits, view, valid)
                if v == 0 and self.query_targets:
                    targets[c] = out
        for chunk, mean, out in zip(chunks, means, targets, strict=True):
            # a tile decided "no target" adds nothing to its scene's mask
            decided, probability = decide(self.model.target_decision, mean.result(), self.target_threshold)
            chunk_boxes, chunk_sizes = [boxes[row] for row, _ in chunk], [sizes[row] for row, _ in chunk]
            logits = resample_to_original(decided, chunk_boxes, chunk_sizes, self.image_size)
            if out is not None:
                answered = decided.flatten(1).amax(1) > self.threshold
                chosen = chosen_targets(out.target_scores, answered)
            for n, ((row, q), tile_logits) in enumerate(zip(chunk, logits, strict=True)):
                g, t = pending[row]
                scenes[g].blenders[q].add(t, tile_logits.float().cpu().numpy())
                if out is not None and len(scenes[g].blenders[q].tiles) == 1:
                    scenes[g].targets[q] = self._query_targets(
                        out.target_logits[n, chosen[n]], out.target_scores[n, chosen[n]], chunk_boxes[n],
                        chunk_sizes[n])
                if probability is not None:
                    scores = scenes[g].target_scores
                    scores[q] = max(scores[q] or 0.0, float(probability[n]))
        bar.update(len(pending))
        for g, n_done in Counter(g for g, _ in pending).items():
            scene = scenes[g]
            scene.left -= n_done
            if scene.left == 0:
                del scenes[g]
                if self.answer_note is None and len(scene.blenders[0].tiles) > 1:
                    frame, _ = letterbox_image(Image.fromarray(scene.image.pixels), self.image_size)
                    self._answer(scene, groups[g][1], self.model.see(frame[None].to(self.device)), 0)
                yield [
                    (index, self._prediction(scene, q, question))
                    for q, (index, question) in enumerate(groups[g][1])
                ]

    def _answer(self, scene: _Scene, asked: list[tuple[int, str]], seen, row: int) -> None:
        """The answer texts of ``scene``'s questions from the image pass ``seen``, row ``row``."""
        questions = [question for _, question in asked]
        index = torch.full((len(questions),), row, dtype=torch.long, device=self.device)
        scene.answers[:] = self.model.answer_texts(seen, questions, index, self.options["answer_tokens"])

    def _query_targets(
        self, logits: torch.Tensor, scores: torch.Tensor, box: tuple, size: tuple[int, int]
    ) -> tuple[list[torch.Tensor], list[float]]:
        """The chosen target queries' masks [P,h,w] (objectness logits [P]) of a one-tile image at its native size:
        (bool masks [H,W], probabilities)."""
        if logits.shape[0] == 0:
            return [], []
        native = resample_to_original(logits, [box] * logits.shape[0], [size] * logits.shape[0], self.image_size)
        return [(mask_logits > self.threshold).cpu() for mask_logits in native], scores.float().sigmoid().tolist()

    def _targets(
        self, found: tuple[list[torch.Tensor], list[float]] | None, mask: np.ndarray, probability: np.ndarray,
        image: LoadedImage,
    ) -> tuple[np.ndarray, list[PredictedTarget]]:
        """The answer's target id map [H,W] and targets, most probable first: ``found`` (a one-tile image's chosen
        target query masks, most probable first, and their probabilities) within the answer ``mask`` without
        overlaps (``disjoint_masks``), or (None) the connected regions of ``mask`` by their mean ``probability``."""
        if found is not None:
            masks, scores = found
            kept = disjoint_masks(masks, torch.from_numpy(mask))
            ids = np.zeros(mask.shape, dtype=np.uint16)
            for number, (_, own) in enumerate(kept, start=1):
                ids[own.numpy()] = number
            scores = [scores[index] for index, _ in kept]
        else:
            labels, count = region_labels(mask)
            means = ndimage.mean(probability, labels, np.arange(1, count + 1)) if count else np.zeros(0)
            order = np.argsort(-means, kind="stable")  # region order[j] becomes target j
            rank = np.zeros(count + 1, dtype=np.uint16 if count <= np.iinfo(np.uint16).max else np.uint32)
            rank[order + 1] = np.arange(1, count + 1)
            ids, scores = rank[labels], [float(means[k]) for k in order]
        areas = np.bincount(ids.ravel(), minlength=len(scores) + 1)[1:]
        pixel_m2 = image.geo.pixel_area_m2 if image.geo is not None else None
        targets = [PredictedTarget(score, int(area), None if pixel_m2 is None else int(area) * pixel_m2)
                   for score, area in zip(scores, areas, strict=True)]
        return ids, targets

    def _prediction(self, scene: _Scene, q: int, question: str) -> Prediction:
        blender = scene.blenders[q]
        logits = blender.result()
        mask = logits > self.threshold
        probability = torch.from_numpy(logits).sigmoid_().numpy()  # in place: no second scene-sized array
        area = int(mask.sum())
        image = scene.image
        pixel_m2 = image.geo.pixel_area_m2 if image.geo is not None else None
        target_ids, targets = self._targets(scene.targets[q], mask, probability, image)
        return Prediction(
            question=question,
            mask=mask,
            probability=probability,
            score=float(probability[mask].mean()) if area else 0.0,
            area_px=area,
            area_m2=None if pixel_m2 is None else area * pixel_m2,
            answer=scene.answers[q],
            image=image,
            tiles=len(blender.tiles),
            target_score=scene.target_scores[q],
            targets=targets,
            target_ids=target_ids,
        )


@dataclass
class _Scene:
    """An image in flight: one blender per question, tiles still to come, and per question the target decision's
    largest score so far, the answer text and (a one-tile image answered by target queries) its targets."""

    image: LoadedImage
    blenders: list[TileBlender]
    left: int
    target_scores: list[float | None]
    answers: list[str | None]
    targets: list[tuple[list[torch.Tensor], list[float]] | None]  # masks most probable first, their scores


def load_model(source: str | Path, device: str = "cpu", tracking_uri: str | None = None, **options: Any) -> Predictor:
    """A ``Predictor`` from a bundle folder, ``models:/NAME@ALIAS`` / ``models:/NAME/VERSION``, a run folder
    (``checkpoints/best.ckpt``) or a ``.ckpt`` file. ``options``: ``batch_size``, ``target_threshold`` and
    ``predict`` settings (``tiling``, ``tile_size``, ``overlap``, ``tile_batch``, ``tta``) overriding the model's
    config."""
    ref = str(source)
    bundle = resolve_bundle(ref, tracking_uri)
    if bundle is not None:
        return Predictor(bundle.build(), bundle.config, ref, device, **options)
    path = Path(ref)
    if path.is_dir() and (path / "checkpoints" / "best.ckpt").is_file():
        path = path / "checkpoints" / "best.ckpt"
    if not path.is_file():
        raise UserError(
            f"{ref}: no such model (expected a bundle folder, a run folder, a .ckpt file or models:/NAME@ALIAS)"
        )
    model, cfg = load_checkpoint_model(path)
    return Predictor(model, cfg, ref, device, **options)
