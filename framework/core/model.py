"""The assembled model: encoder → compressor → llm → projector → mask head → read-out, built from the ``model`` config.

The framework owns the data flow between slots and the slot-generic options (``SlotSpec.options``); components know
only their own contract (``framework.core.contracts``). A batch is a set of distinct images and, per question, the
image it asks about (``image_index``): the question-independent work (``see``: encoder, compressor, the mask head's
pixel features) runs once per image, the rest (``answer``: LLM, projector, the head's decoding) once per question.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import components  # noqa: F401  (registers every component)
from framework.core.errors import ConfigError
from framework.core.readout import READOUTS, TargetsReadout
from framework.core.registry import SLOT_REGISTRIES
from framework.core.rows import ImagePass, check_image_index, take_rows
from framework.core.slot_clock import part
from framework.core.slots import DEFAULT_READOUT, SLOT_SPECS, SLOTS
from framework.core.target import TARGETS

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def split_slot_config(slot: str, cfg: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(framework options with their defaults, component config) of one slot config; bad options: ConfigError."""
    options = dict(SLOT_SPECS[slot].options)
    component = {}
    for key, value in cfg.items():
        if key not in options:
            component[key] = value
            continue
        if key in ("frozen", "grad_checkpointing") and not isinstance(value, bool):
            raise ConfigError(f"model.{slot}.{key}: expected bool, got {value!r}")
        if key == "dtype" and value not in DTYPES:
            raise ConfigError(f"model.{slot}.dtype: expected one of {', '.join(DTYPES)}, got {value!r}")
        if key == "level" and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"model.{slot}.level: expected int, got {value!r}")
        options[key] = value
    if options.get("dtype", "float32") != "float32" and not options["frozen"]:
        raise ConfigError(f"model.{slot}.dtype: {options['dtype']} weights need frozen: true (no fp32 master copy)")
    return options, component


def check_model_config(model_cfg: dict[str, Any]) -> None:
    """Check every slot config and the read-out against their components' signatures without building anything."""
    for spec in SLOTS:
        cfg = model_cfg.get(spec.name)
        if cfg is None:
            if spec.optional:
                continue
            raise ConfigError(f"model.{spec.name} is missing")
        _, component = split_slot_config(spec.name, cfg)
        SLOT_REGISTRIES[spec.name].check(component, dict.fromkeys(spec.injected), where=f"model.{spec.name}")
    READOUTS.check(
        model_cfg.get("readout") or dict(DEFAULT_READOUT), {"query_dim": None, "feature_channels": None},
        where="model.readout",
    )
    if model_cfg.get("target_decision"):
        TARGETS.check(model_cfg["target_decision"], where="model.target_decision")


def enable_grad_checkpointing(slot: str, module: nn.Module) -> None:
    """Turn on the component's activation checkpointing (its ``set_grad_checkpointing(True)``, timm's name)."""
    setter = getattr(module, "set_grad_checkpointing", None)
    if setter is None:
        raise ConfigError(
            f"model.{slot}.grad_checkpointing: component {type(module).__name__} does not support it "
            "(no set_grad_checkpointing method)"
        )
    setter(True)


def freeze(module: nn.Module) -> None:
    """No gradients for ``module``; ``SegEarthModel.train`` keeps it in eval mode too."""
    module.requires_grad_(False)
    module.eval()


@dataclass
class ModelOutput:
    """``mask_logits`` [B,H/s,W/s] (the answer mask per question), ``aux_logits``: deep-supervision predictions of
    the same shape, ``output_stride`` s, ``image_index`` [B] (the image each question asked about; rows with equal
    values share one), ``lm_loss`` or None, and what the read-out adds: ``terms`` (training loss terms, each
    weighted by ``loss.<name>_weight``), ``notes`` (per-question annotations, e.g. ``routed``: concept names) and,
    for a read-out with target queries (``targets``), ``target_logits`` [B,K,H/s,W/s] (one mask per target query) and
    ``target_scores`` [B,K] (their objectness logits)."""

    mask_logits: torch.Tensor
    aux_logits: list[torch.Tensor]
    output_stride: int
    image_index: torch.Tensor
    lm_loss: torch.Tensor | None = None
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    notes: dict[str, list] = field(default_factory=dict)
    target_logits: torch.Tensor | None = None
    target_scores: torch.Tensor | None = None


class SegEarthModel(nn.Module):
    """Geospatial pixel reasoning model assembled from one component per slot and a read-out."""

    def __init__(self, model_cfg: dict[str, Any]) -> None:
        super().__init__()
        check_model_config(model_cfg)
        options: dict[str, dict[str, Any]] = {}
        component: dict[str, dict[str, Any]] = {}
        for spec in SLOTS:
            if model_cfg.get(spec.name) is not None:
                options[spec.name], component[spec.name] = split_slot_config(spec.name, model_cfg[spec.name])

        # built in dependency order: the compressor and projector are sized by the encoder, the LLM and the head
        self.encoder = SLOT_REGISTRIES["encoder"].build(component["encoder"], where="model.encoder")
        self.llm = SLOT_REGISTRIES["llm"].build(component["llm"], where="model.llm")
        if self.llm.uses_image != ("compressor" in component):
            raise ConfigError(
                "model.compressor is null but the LLM prompt has an <image> placeholder"
                if self.llm.uses_image
                else "model.compressor makes visual tokens but the LLM prompt has no <image> placeholder"
            )
        channels, strides = list(self.encoder.channels), list(self.encoder.strides)
        self.compressor = None
        self.compressor_level = None
        if "compressor" in component:
            level = options["compressor"]["level"]
            if not -len(channels) <= level < len(channels):
                raise ConfigError(f"model.compressor.level: {level} out of range for {len(channels)} encoder levels")
            self.compressor = SLOT_REGISTRIES["compressor"].build(
                component["compressor"], where="model.compressor", in_channels=channels[level],
                out_dim=self.llm.hidden_size,
            )
            self.compressor_level = level
        self.mask_head = SLOT_REGISTRIES["mask_head"].build(
            component["mask_head"], where="model.mask_head", in_channels=channels, strides=strides
        )
        self.projector = SLOT_REGISTRIES["projector"].build(
            component["projector"],
            where="model.projector",
            text_dim=self.llm.hidden_size,
            feature_channels=channels,
            feature_strides=strides,
            out_dim=self.mask_head.query_dim,
        )
        self.readout = READOUTS.build(
            model_cfg.get("readout") or dict(DEFAULT_READOUT), where="model.readout",
            query_dim=self.mask_head.query_dim, feature_channels=channels,
        )
        decision = model_cfg.get("target_decision")
        self.target_decision = TARGETS.build(decision, where="model.target_decision") if decision else None

        self.frozen_slots = [slot for slot, opts in options.items() if opts["frozen"]]
        for slot in self.frozen_slots:
            freeze(getattr(self, slot))
        self.encoder_dtype = DTYPES[options["encoder"]["dtype"]]
        self.encoder.to(self.encoder_dtype)
        for slot, opts in options.items():
            if opts["grad_checkpointing"]:
                enable_grad_checkpointing(slot, getattr(self, slot))

    def slots(self) -> dict[str, nn.Module]:
        """The built components by slot name (the compressor is absent when not configured)."""
        return {spec.name: getattr(self, spec.name) for spec in SLOTS if getattr(self, spec.name) is not None}

    def train(self, mode: bool = True) -> SegEarthModel:
        super().train(mode)
        for slot in self.frozen_slots:
            getattr(self, slot).eval()  # dropout / DropPath never run on a frozen part
        return self

    @property
    def has_target_queries(self) -> bool:
        """Whether the read-out has target queries (several targets per question)."""
        return isinstance(self.readout, TargetsReadout)

    @property
    def max_stride(self) -> int:
        return max(self.encoder.strides)

    def check_image_size(self, size: int) -> None:
        """A ConfigError unless ``data.image_size`` ``size`` is a multiple of the encoder's largest stride."""
        stride = self.max_stride
        if size % stride:
            lower, upper = size // stride * stride, -(-size // stride) * stride
            raise ConfigError(
                f"data.image_size {size} is not a multiple of the encoder's largest stride {stride} "
                f"(e.g. {lower or upper} or {upper})"
            )

    def encode(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The encoder's maps [U,C_i,H/s_i,W/s_i] of images [U,3,H,W] in [0,1] (H, W divisible by ``max_stride``).
        In training mode its batch-norm statistics come from these U images."""
        h, w = images.shape[-2:]
        if h % self.max_stride or w % self.max_stride:
            raise ValueError(f"image size {h}x{w} is not divisible by the encoder's largest stride {self.max_stride}")
        no_grad = torch.no_grad() if "encoder" in self.frozen_slots else contextlib.nullcontext()
        with no_grad, part("encoder", images.shape[0]):
            features = self.encoder(images.to(self.encoder_dtype))
        if self.encoder_dtype != images.dtype:  # a low-precision frozen encoder hands on features as the input came
            features = [f.to(images.dtype) for f in features]
        return features

    def see(self, images: torch.Tensor, visual_tokens: torch.Tensor | None = None) -> ImagePass:
        """The question-independent slots, once per distinct image [U,3,H,W]: the encoder, the compressor and the
        mask head's pixel features. ``visual_tokens`` [U,N,D_llm]: used instead of the compressor's (the
        image-blind control)."""
        return self.see_encoded(self.encode(images), visual_tokens)

    def see_encoded(self, features: list[torch.Tensor], visual_tokens: torch.Tensor | None = None) -> ImagePass:
        """``see`` after the encoder: the compressor and the mask head's pixel features on its maps (a frozen
        encoder's maps stay valid while the other slots train)."""
        images = features[0].shape[0]
        if visual_tokens is None and self.compressor is not None:
            with part("compressor", images):
                visual_tokens = self.compressor(features[self.compressor_level])
        with part("pixel decoder", images):
            pixels = self.mask_head.pixel_features(features)
        return ImagePass(features, visual_tokens, pixels)

    def visual_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """The compressor's tokens [U,N,D_llm] of images [U,3,H,W] (encoder and compressor only)."""
        if self.compressor is None:
            raise ConfigError("the model has no visual tokens (model.compressor is null)")
        return self.compressor(self.encode(images)[self.compressor_level])

    def answer(
        self,
        seen: ImagePass,
        questions: list[str],
        image_index: torch.Tensor | None = None,
        answers: list[str] | None = None,
        concepts: list[str] | None = None,
    ) -> ModelOutput:
        """Mask logits for each question [B] about the image ``image_index`` [B] of ``seen`` (None: question i asks
        about image i). ``answers``: supervise the LLM's answer text; ``concepts`` (training): each sample's concept
        name, for read-outs that train on them."""
        index = check_image_index(image_index, len(questions), seen.images, seen.features[0].device)
        rows = len(questions)
        with part("llm", rows):  # each image's visual tokens once: the LLM may run their shared prefix once
            llm_out = self.llm(questions, seen.visual_tokens, answers, image_index=index)
        with part("projector", rows):
            queries = self.projector(llm_out, [take_rows(f, index) for f in seen.features])
        with part("mask decoder", rows):
            read = self.readout(self.mask_head, seen, index, queries, concepts)
        return ModelOutput(
            mask_logits=read.masks,
            aux_logits=read.aux,
            output_stride=self.mask_head.output_stride,
            image_index=index,
            lm_loss=llm_out.lm_loss,
            terms=read.terms,
            notes=read.notes,
            target_logits=read.target_masks,
            target_scores=read.target_scores,
        )

    def why_no_answer_text(self, config: dict[str, Any]) -> str | None:
        """None when the model, trained with ``config``, learnt to answer in words (its LLM has an answer template
        and ``loss.lm_weight`` > 0), else why not."""
        if not getattr(self.llm, "answers_in_words", False):
            return "its LLM has no answer template"
        if config["loss"]["lm_weight"] <= 0:
            return "loss.lm_weight is 0"
        return None

    def answer_texts(
        self, seen: ImagePass, questions: list[str], image_index: torch.Tensor | None = None, max_tokens: int = 32
    ) -> list[str]:
        """The LLM's greedy answer text to each question [B] about the image ``image_index`` [B] of ``seen``."""
        index = check_image_index(image_index, len(questions), seen.images, seen.features[0].device)
        with part("answer text", len(questions)):
            return self.llm.generate(questions, seen.visual_tokens, index, max_tokens)

    def forward(
        self,
        images: torch.Tensor,
        questions: list[str],
        image_index: torch.Tensor | None = None,
        answers: list[str] | None = None,
        concepts: list[str] | None = None,
    ) -> ModelOutput:
        """``answer(see(images), ...)``: distinct images [U,3,H,W] in [0,1], questions [B] about ``image_index``."""
        return self.answer(self.see(images), questions, image_index, answers, concepts)


def upsample_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling of [B,h,w] mask logits to ``size`` (the letterboxed input size), as the reference."""
    return F.interpolate(logits[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]
