"""The assembled model: encoder → compressor → llm → projector → mask head, built from the ``model`` config.

The framework owns the data flow between slots and the slot-generic options (``frozen`` on every slot,
``level`` on the compressor); components know only their own contract (``framework.contracts``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from framework.contracts import LLMOutput, MaskHeadOutput
from framework.errors import ConfigError, DataError
from framework.registry import SLOTS

# Constructor arguments the framework passes to each slot's component (a config must not set them).
INJECTED: dict[str, tuple[str, ...]] = {
    "encoder": (),
    "llm": (),
    "compressor": ("in_channels", "out_dim"),
    "mask_head": ("in_channels", "strides"),
    "projector": ("text_dim", "feature_channels", "feature_strides", "out_dim"),
}
# Slot options the framework handles itself, with their defaults.
# ``grad_checkpointing``: recompute the slot's blocks in the backward pass (the component's
# ``set_grad_checkpointing``); ``dtype`` (encoder, frozen only): weights stored in bfloat16/float16 to save memory.
FRAMEWORK_KEYS: dict[str, dict[str, Any]] = {
    "encoder": {"frozen": False, "grad_checkpointing": False, "dtype": "float32"},
    "llm": {"frozen": False, "grad_checkpointing": False},
    "compressor": {"frozen": False, "level": -1, "grad_checkpointing": False},
    "mask_head": {"frozen": False, "grad_checkpointing": False},
    "projector": {"frozen": False, "grad_checkpointing": False},
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _split(slot: str, cfg: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(framework options, component config) of one slot config."""
    options = dict(FRAMEWORK_KEYS[slot])
    component = {}
    for key, value in cfg.items():
        if key in options:
            if key in ("frozen", "grad_checkpointing") and not isinstance(value, bool):
                raise ConfigError(f"model.{slot}.{key}: expected bool, got {value!r}")
            if key == "dtype" and value not in DTYPES:
                raise ConfigError(f"model.{slot}.dtype: expected one of {', '.join(DTYPES)}, got {value!r}")
            if key == "level" and (isinstance(value, bool) or not isinstance(value, int)):
                raise ConfigError(f"model.{slot}.level: expected int, got {value!r}")
            options[key] = value
        else:
            component[key] = value
    if options.get("dtype", "float32") != "float32" and not options["frozen"]:
        raise ConfigError(f"model.{slot}.dtype: {options['dtype']} weights need frozen: true (no fp32 master copy)")
    return options, component


def check_model_config(model_cfg: dict[str, Any]) -> None:
    """Check every slot config against its component's signature without building anything."""
    import components  # noqa: F401  (registers every component)

    for slot, registry in SLOTS.items():
        cfg = model_cfg.get(slot)
        if cfg is None:
            if slot == "compressor":
                continue
            raise ConfigError(f"model.{slot} is missing")
        _, component = _split(slot, cfg)
        registry.check(component, dict.fromkeys(INJECTED[slot]), where=f"model.{slot}")


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
    """``mask_logits`` [B,H/s,W/s] (the answer mask; Q>1 queries are combined by max = union),
    ``aux_logits``: deep-supervision predictions of the same shape, ``lm_loss`` or None, ``output_stride`` s,
    ``image_index`` [B]: rows with equal values were asked of the same image (None: every row its own image).
    ``queries``/``teacher_queries``: see ``SegEarthModel.forward``'s ``concept_ids``."""

    mask_logits: torch.Tensor
    aux_logits: list[torch.Tensor] = field(default_factory=list)
    lm_loss: torch.Tensor | None = None
    output_stride: int = 4
    llm: LLMOutput | None = None
    image_index: torch.Tensor | None = None
    queries: torch.Tensor | None = None  # the projector's [B,Q,D]
    teacher_queries: torch.Tensor | None = None  # the concept queries that asked the head instead (training only)
    routed: torch.Tensor | None = None  # [B] concept ids the questions were routed to (``concept_readout: choice``)


CONCEPT_READOUTS = ("projector", "choice")


class ConceptQueries(nn.Module):
    """One learned query per named concept (``model.concepts``), the teacher of the projector in training.

    In training the mask head is asked with the sample's concept query instead of the projector's, so the head and
    these queries learn a segmenter with one query per concept; the projector only learns to map each question's
    description embedding onto its concept's query (``loss.concept_query_weight``). Measured on the Dubai tiles
    (README): the same MLP routed 27 of 30 unseen phrasings to their class when trained through the segmentation
    loss, 29 of 30 when regressed onto its class-mean queries.

    ``readout`` (``model.concept_readout``) is what answers outside training:

    - ``projector``: the head is asked with the projector's query; the concepts are never read.
    - ``choice``: the head is asked with every concept query, and each pixel goes to at most one concept (a softmax
      over the concepts' logits and a background logit 0). A question is routed to the concept nearest its query;
      its mask logit is the log-odds of that concept winning the pixel, ``s_c - logsumexp({s_k, k != c} + {0})``
      (the same read-out trains, with the sample's own concept). Measured on Dubai (README): a frozen-feature
      read-out that must choose one class per pixel found the unseen tile's mangroves (vegetation 0.56 IoU) where a
      per-class sigmoid on the same features did not (0.16); in the model, ``choice`` lifted tile 6 from 0.436 /
      0.412 to 0.491 / 0.462 (gIoU / cIoU), through roads and buildings more than vegetation.
    """

    def __init__(self, concepts: list[str], query_dim: int, readout: str = "projector") -> None:
        super().__init__()
        if not concepts or len(set(concepts)) != len(concepts) or not all(isinstance(c, str) and c for c in concepts):
            raise ConfigError(f"model.concepts: {concepts!r} must be a list of distinct, non-empty concept names")
        if readout not in CONCEPT_READOUTS:
            raise ConfigError(f"model.concept_readout: expected one of {', '.join(CONCEPT_READOUTS)}, got {readout!r}")
        self.concepts = list(concepts)
        self.readout = readout
        self.index = {c: i for i, c in enumerate(self.concepts)}
        self.queries = nn.Embedding(len(concepts), query_dim)
        nn.init.normal_(self.queries.weight, std=0.02)

    def ids(self, concepts: list[str]) -> torch.Tensor:
        """Row indices [B] of the batch's concept names; a sample whose concept is not listed is a data error."""
        unknown = sorted({c for c in concepts if c not in self.index})
        if unknown:
            named = ", ".join(repr(c) for c in unknown)
            raise DataError(
                f"model.concepts: training samples name concept(s) {named}, not in {self.concepts}"
                + (" ('' = the data format names none)" if "" in unknown else "")
            )
        return torch.tensor([self.index[c] for c in concepts], device=self.queries.weight.device)

    def forward(self, ids: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """The concept queries shaped like the projector's ``queries`` [B,1,D]."""
        _check_single(queries)
        return self.queries(ids).unsqueeze(1)

    def route(self, queries: torch.Tensor) -> torch.Tensor:
        """Ids [B] of the concepts nearest (Euclidean) to the projector's queries [B,1,D]."""
        _check_single(queries)
        return torch.cdist(queries[:, 0].float(), self.queries.weight.float()).argmin(dim=1)

    def all_queries(self, batch: int) -> torch.Tensor:
        """Every concept query for each row, [batch,K,D] (a view)."""
        return self.queries.weight.unsqueeze(0).expand(batch, -1, -1)

    @staticmethod
    def choose(masks: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """[B,h,w] log-odds that concept ``ids`` [B] wins each pixel, from every concept's logits [B,K,h,w]."""
        rows = torch.arange(masks.shape[0], device=masks.device)
        own = masks[rows, ids]
        chosen = F.one_hot(ids, masks.shape[1]).bool()[:, :, None, None]
        rivals = torch.cat([masks.masked_fill(chosen, float("-inf")), torch.zeros_like(own)[:, None]], dim=1)
        return own - torch.logsumexp(rivals, dim=1)


def _check_single(queries: torch.Tensor) -> None:
    if queries.shape[1] != 1:
        raise ConfigError(f"model.concepts needs a projector that makes one query; this one makes {queries.shape[1]}")


class SegEarthModel(nn.Module):
    """Geospatial pixel reasoning model assembled from one component per slot."""

    def __init__(self, model_cfg: dict[str, Any]) -> None:
        super().__init__()
        import components  # noqa: F401  (registers every component)

        check_model_config(model_cfg)
        options = {}
        built: dict[str, nn.Module | None] = {}
        enc_opts, enc_cfg = _split("encoder", model_cfg["encoder"])
        built["encoder"] = SLOTS["encoder"].build(enc_cfg, where="model.encoder")
        options["encoder"] = enc_opts
        llm_opts, llm_cfg = _split("llm", model_cfg["llm"])
        built["llm"] = SLOTS["llm"].build(llm_cfg, where="model.llm")
        options["llm"] = llm_opts
        encoder, llm = built["encoder"], built["llm"]
        if llm.uses_image != (model_cfg.get("compressor") is not None):
            raise ConfigError(
                "model.compressor is null but the LLM prompt has an <image> placeholder"
                if llm.uses_image
                else "model.compressor makes visual tokens but the LLM prompt has no <image> placeholder"
            )
        n_levels = len(encoder.channels)
        if model_cfg.get("compressor") is not None:
            comp_opts, comp_cfg = _split("compressor", model_cfg["compressor"])
            level = comp_opts["level"]
            if not -n_levels <= level < n_levels:
                raise ConfigError(f"model.compressor.level: {level} out of range for {n_levels} encoder levels")
            built["compressor"] = SLOTS["compressor"].build(
                comp_cfg, where="model.compressor", in_channels=encoder.channels[level], out_dim=llm.hidden_size
            )
            options["compressor"] = comp_opts
            self.compressor_level = level
        else:
            built["compressor"] = None
            options["compressor"] = {"frozen": False}
            self.compressor_level = None
        head_opts, head_cfg = _split("mask_head", model_cfg["mask_head"])
        built["mask_head"] = SLOTS["mask_head"].build(
            head_cfg, where="model.mask_head", in_channels=list(encoder.channels), strides=list(encoder.strides)
        )
        options["mask_head"] = head_opts
        proj_opts, proj_cfg = _split("projector", model_cfg["projector"])
        built["projector"] = SLOTS["projector"].build(
            proj_cfg,
            where="model.projector",
            text_dim=llm.hidden_size,
            feature_channels=list(encoder.channels),
            feature_strides=list(encoder.strides),
            out_dim=built["mask_head"].query_dim,
        )
        options["projector"] = proj_opts
        concepts = model_cfg.get("concepts")
        readout = model_cfg.get("concept_readout", "projector")
        if concepts is None and readout != "projector":
            raise ConfigError(f"model.concept_readout: {readout!r} needs model.concepts")
        self.concept_queries = (
            None if concepts is None else ConceptQueries(concepts, built["mask_head"].query_dim, readout)
        )

        self.encoder = encoder
        self.compressor = built["compressor"]
        self.llm = llm
        self.projector = built["projector"]
        self.mask_head = built["mask_head"]
        self.frozen_slots = [slot for slot, opts in options.items() if opts["frozen"] and built[slot] is not None]
        for slot in self.frozen_slots:
            freeze(getattr(self, slot))
        self.encoder_dtype = DTYPES[enc_opts["dtype"]]
        self.encoder.to(self.encoder_dtype)
        for slot, opts in options.items():
            if opts.get("grad_checkpointing"):
                enable_grad_checkpointing(slot, built[slot])

    def slots(self) -> dict[str, nn.Module]:
        """The built components by slot name (the compressor is absent when not configured)."""
        named = {
            "encoder": self.encoder,
            "compressor": self.compressor,
            "llm": self.llm,
            "projector": self.projector,
            "mask_head": self.mask_head,
        }
        return {k: v for k, v in named.items() if v is not None}

    def train(self, mode: bool = True) -> SegEarthModel:
        super().train(mode)
        for slot in self.frozen_slots:
            getattr(self, slot).eval()  # dropout / DropPath never run on a frozen part
        return self

    @property
    def max_stride(self) -> int:
        return max(self.encoder.strides)

    def encode(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Encoder features for images [B,3,H,W] in [0,1]; question-independent, computed once per image.

        Identical images of the batch (several questions asked of one image) are encoded once and their features
        shared; in training mode batch-norm statistics therefore come from the distinct images."""
        distinct, inverse = self.encode_distinct(images)
        return distinct if inverse is None else [f[inverse] for f in distinct]

    def encode_distinct(self, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """(features of the distinct images [U,C_i,H/s_i,W/s_i], inverse [B] with ``features[inverse]`` the batch's;
        None when every image of the batch is distinct)."""
        h, w = images.shape[-2:]
        if h % self.max_stride or w % self.max_stride:
            raise ValueError(f"image size {h}x{w} is not divisible by the encoder's largest stride {self.max_stride}")
        distinct, inverse = distinct_rows(images)
        with torch.no_grad() if "encoder" in self.frozen_slots else contextlib.nullcontext():
            features = self.encoder(distinct.to(self.encoder_dtype))
        if self.encoder_dtype != images.dtype:  # a low-precision frozen encoder hands on features as the input came
            features = [f.to(images.dtype) for f in features]
        return features, None if distinct.shape[0] == images.shape[0] else inverse

    def forward(
        self,
        images: torch.Tensor | None,
        questions: list[str],
        answers: list[str] | None = None,
        features: list[torch.Tensor] | None = None,
        concept_ids: torch.Tensor | None = None,
    ) -> ModelOutput:
        """Mask logits for each (image, question) pair.

        ``images`` [B,3,H,W] in [0,1], or precomputed ``features`` (from ``encode``) to ask new questions of
        the same images without re-running the encoder. ``concept_ids`` [B] (training with ``model.concepts``):
        the head is asked with those concept queries (``teacher_queries``) instead of the projector's; with
        ``concept_readout: choice`` the head is asked with every concept and each row answered by its concept's
        choice log-odds (``ConceptQueries.choose``), the concept given by ``concept_ids`` or else routed.

        The question-independent slots run once per distinct image of the batch: the encoder, the compressor and a
        mask head's ``pixel_features`` (when it has the ``pixel_features``/``decode`` split), and with
        ``concept_readout: choice`` the whole mask head; their outputs are then gathered to the batch's rows.
        """
        inverse = None
        if features is None:
            if images is None:
                raise ValueError("forward needs images or features")
            features, inverse = self.encode_distinct(images)
        elif features[0].shape[0] > 1 and all(f.stride(0) == 0 for f in features):
            # one image's features expanded over its questions (``Predictor``): the image-only slots run once
            inverse = torch.zeros(features[0].shape[0], dtype=torch.long, device=features[0].device)
            features = [f[:1] for f in features]
        rows = features[0].shape[0] if inverse is None else inverse.shape[0]
        if len(questions) != rows:
            raise ValueError(f"{len(questions)} questions for a batch of {rows} images")

        def per_row(tensor: torch.Tensor) -> torch.Tensor:
            if inverse is None:
                return tensor
            if tensor.shape[0] == 1:  # a view, no copy: the rows are one image's
                return tensor.expand(rows, *tensor.shape[1:])
            return tensor[inverse]

        visual_tokens = None
        if self.compressor is not None:
            visual_tokens = per_row(self.compressor(features[self.compressor_level]))
        llm_out = self.llm(questions, visual_tokens, answers)
        batch_features = [per_row(f) for f in features]
        queries = self.projector(llm_out, batch_features)
        teacher = None
        if concept_ids is not None:
            if self.concept_queries is None:
                raise ValueError("concept_ids given but the model has no model.concepts")
            teacher = self.concept_queries(concept_ids, queries)
        asking = queries if teacher is None else teacher
        choice = self.concept_queries is not None and self.concept_queries.readout == "choice"
        if choice:
            chosen = self.concept_queries.route(queries) if concept_ids is None else concept_ids
            # every row of an image asks the same concept queries: the head runs once per distinct image
            every = self.mask_head(features, self.concept_queries.all_queries(features[0].shape[0]))
            head_out = MaskHeadOutput(masks=per_row(every.masks), aux=[per_row(a) for a in every.aux])
        elif hasattr(self.mask_head, "pixel_features"):
            pixels = map_tensors(per_row, self.mask_head.pixel_features(features))
            head_out = self.mask_head.decode(pixels, asking)
        else:
            head_out = self.mask_head(batch_features, asking)

        def combine(masks: torch.Tensor) -> torch.Tensor:
            if choice:
                return self.concept_queries.choose(masks, chosen)
            return masks.amax(dim=1) if masks.shape[1] > 1 else masks[:, 0]

        return ModelOutput(
            mask_logits=combine(head_out.masks),
            aux_logits=[combine(a) for a in head_out.aux],
            lm_loss=llm_out.lm_loss,
            output_stride=self.mask_head.output_stride,
            llm=llm_out,
            image_index=inverse,
            queries=queries,
            teacher_queries=teacher,
            routed=chosen if choice and concept_ids is None else None,
        )


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


def distinct_rows(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(distinct images [U,...] in order of first occurrence, inverse [B]) with ``distinct[inverse]`` == ``images``."""
    if images.shape[0] < 2:
        return images, torch.zeros(images.shape[0], dtype=torch.long, device=images.device)
    _, inverse = torch.unique(images.flatten(1), dim=0, return_inverse=True)
    # first occurrence of each distinct row, so the distinct images keep the batch's order
    first = torch.full((int(inverse.max()) + 1,), images.shape[0], dtype=torch.long, device=images.device)
    first.scatter_reduce_(0, inverse, torch.arange(images.shape[0], device=images.device), reduce="amin")
    order = torch.argsort(first)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)
    return images[first[order]], rank[inverse]


def upsample_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling of [B,h,w] mask logits to ``size`` (the letterboxed input size), as the reference."""
    return F.interpolate(logits[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]
