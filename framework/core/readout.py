"""Read-outs: how the mask head is asked and its answers become one mask per question (``model.readout``).

A read-out is built with ``query_dim`` and the encoder's ``feature_channels`` per level; it gets the mask head, the ``ImagePass`` of the U distinct images, each question's ``image_index`` [B], the
projector's ``queries`` [B,Q,D] and, in training, each sample's concept name; it returns ``Readout``: the mask
logits [B,h,w] with their deep-supervision predictions, and what it adds to the training loss and to each row.

- ``query`` (the reference's): the head is asked with the projector's queries; Q > 1 queries are combined by
  max (their union).
- ``targets``: as ``query`` for the answer mask (the union of the question's targets), and besides it K target
  queries: the projector's query plus K learned embeddings, refined by ``layers`` rounds of attention to the
  encoder's map at ``level`` (with 2-D sine positions) and to each other, each decoded by the head into one target's
  mask and scored by a linear objectness logit. Training matches them to the ground-truth instances (Hungarian,
  ``framework.train.matching``); outside training a target is a query whose objectness probability is above 0.5.
- ``concept_teacher``: one learned query per named concept (``concepts``). In training the head is asked with
  the sample's concept query instead of the projector's, so the head and these queries learn a segmenter with one
  query per concept, and the projector learns to reproduce its concept's query (term ``concept_query``: MSE, the
  teacher detached). Outside training it answers as ``query``.
- ``concept_choice``: as ``concept_teacher`` in training, except that the head is asked with every concept query,
  once per image, and each pixel goes to at most one concept: a question's mask logit is the log-odds that its
  concept wins the pixel against the others and a background logit 0, ``s_c - logsumexp({s_k, k != c} + {0})``.
  Outside training a question is routed to the concept nearest (Euclidean) its projector query (note ``routed``).
  It is a closed-set read-out: it can only answer with one of its concepts.

Measured effects of the concept read-outs: docs/results/dubai.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from framework.core.contracts import MaskHead, MaskHeadOutput
from framework.core.errors import ConfigError, DataError
from framework.core.positions import sine_position_encoding_2d
from framework.core.registry import Registry
from framework.core.rows import ImagePass, map_tensors, take_rows

READOUTS = Registry("readout")


@dataclass
class Readout:
    """``masks`` [B,h,w] logits, ``aux``: deep-supervision predictions of that shape, ``terms``: training loss terms
    by name, ``notes``: per-row annotations by name (lists of length B)."""

    masks: torch.Tensor
    aux: list[torch.Tensor]
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    notes: dict[str, list] = field(default_factory=dict)
    target_masks: torch.Tensor | None = None  # [B,K,h,w] logits: one mask per target query (``targets``)
    target_scores: torch.Tensor | None = None  # [B,K] objectness logits of those queries


TARGET_PROBABILITY = 0.5  # a target query is a target when its objectness probability is above this


def chosen_targets(scores: torch.Tensor, answered: torch.Tensor) -> list[torch.Tensor]:
    """Per row of objectness logits ``scores`` [B,K], the indices of its target queries that are targets, most
    probable first (none in a row not ``answered`` [B] bool: decided "no target")."""
    probability = scores.float().sigmoid()
    chosen = []
    for row, keep in zip(probability, answered.tolist(), strict=True):
        order = row.argsort(descending=True)
        chosen.append(order[row[order] > TARGET_PROBABILITY] if keep else order[:0])
    return chosen


def _rows(head: MaskHead, seen: ImagePass, index: torch.Tensor, queries: torch.Tensor) -> MaskHeadOutput:
    """The head's decoding of each question's image pixels with its queries."""
    return head.decode(map_tensors(lambda t: take_rows(t, index), seen.pixels), queries)


def _union(masks: torch.Tensor) -> torch.Tensor:
    return masks.amax(dim=1) if masks.shape[1] > 1 else masks[:, 0]


@READOUTS.register("query")
class QueryReadout(nn.Module):
    """The head asked with the projector's queries; several queries per question give their union (max)."""

    def __init__(self, query_dim: int, feature_channels: list[int]) -> None:
        super().__init__()

    def forward(
        self, head: MaskHead, seen: ImagePass, index: torch.Tensor, queries: torch.Tensor, concepts: list[str] | None
    ) -> Readout:
        out = _rows(head, seen, index, queries)
        return Readout(_union(out.masks), [_union(a) for a in out.aux])


class _ConceptReadout(nn.Module):
    """One learned query per concept (``concepts``), the projector's teacher in training."""

    def __init__(self, query_dim: int, feature_channels: list[int], concepts: list[str]) -> None:
        super().__init__()
        if not concepts or len(set(concepts)) != len(concepts) or not all(isinstance(c, str) and c for c in concepts):
            raise ConfigError(f"model.readout.concepts: {concepts!r} must be a list of distinct, non-empty names")
        self.concepts = list(concepts)
        self.index = {c: i for i, c in enumerate(self.concepts)}
        self.queries = nn.Embedding(len(concepts), query_dim)
        nn.init.normal_(self.queries.weight, std=0.02)

    def ids(self, concepts: list[str]) -> torch.Tensor:
        """Row indices [B] of the samples' concept names; a concept not listed is a data error."""
        unknown = sorted({c for c in concepts if c not in self.index})
        if unknown:
            named = ", ".join(repr(c) for c in unknown)
            raise DataError(
                f"model.readout.concepts: training samples name concept(s) {named}, not in {self.concepts}"
                + (" ('' = the data format names none)" if "" in unknown else "")
            )
        return torch.tensor([self.index[c] for c in concepts], device=self.queries.weight.device)

    def route(self, queries: torch.Tensor) -> torch.Tensor:
        """Ids [B] of the concepts nearest (Euclidean) to the projector's queries [B,1,D]."""
        return torch.cdist(queries[:, 0].float(), self.queries.weight.float()).argmin(dim=1)

    def teach(self, queries: torch.Tensor, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """The projector's training term: its queries [B,1,D] onto their concepts' (the teacher is not pulled
        towards the projector: the segmentation loss alone shapes it)."""
        return {"concept_query": F.mse_loss(queries, self.queries(ids).unsqueeze(1).detach())}

    @staticmethod
    def check_single(queries: torch.Tensor) -> None:
        if queries.shape[1] != 1:
            raise ConfigError(f"model.readout: concepts need a projector that makes one query, not {queries.shape[1]}")


class _TargetLayer(nn.Module):
    """Pre-norm: queries += attention(queries -> keys memory + pos, values memory); += self-attention; += MLP."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(3))
        self.cross = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.itself = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, queries: torch.Tensor, memory: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        x = self.norms[0](queries)
        queries = queries + self.cross(x, memory + position, memory, need_weights=False)[0]
        x = self.norms[1](queries)
        queries = queries + self.itself(x, x, x, need_weights=False)[0]
        return queries + self.mlp(self.norms[2](queries))


@READOUTS.register("targets")
class TargetsReadout(QueryReadout):
    """The union mask as ``query``, plus ``targets`` target queries with their masks and objectness logits (module
    docstring). ``level``: the encoder level the target queries attend to (negative counts from the coarsest)."""

    def __init__(
        self, query_dim: int, feature_channels: list[int], targets: int = 16, level: int = -2, layers: int = 2,
        heads: int = 4,
    ) -> None:
        super().__init__(query_dim, feature_channels)
        if targets < 1 or layers < 0:
            raise ConfigError(f"model.readout: targets must be >= 1 and layers >= 0, got {targets} and {layers}")
        if not -len(feature_channels) <= level < len(feature_channels):
            raise ConfigError(f"model.readout.level: {level} out of range for {len(feature_channels)} encoder levels")
        if query_dim % heads or query_dim % 4:
            raise ConfigError(f"model.readout: query_dim {query_dim} must be divisible by heads {heads} and by 4")
        self.level = level
        self.embeddings = nn.Parameter(torch.randn(targets, query_dim) * 0.02)
        self.memory = nn.Conv2d(feature_channels[level], query_dim, kernel_size=1)
        self.layers = nn.ModuleList(_TargetLayer(query_dim, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(query_dim)
        self.objectness = nn.Linear(query_dim, 1)
        self.where = nn.Linear(query_dim, query_dim)  # a target query's weights over the grid's Fourier features
        nn.init.normal_(self.where.weight, std=0.02 / math.sqrt(query_dim))
        nn.init.zeros_(self.where.bias)

    def forward(
        self, head: MaskHead, seen: ImagePass, index: torch.Tensor, queries: torch.Tensor, concepts: list[str] | None
    ) -> Readout:
        union = super().forward(head, seen, index, queries, concepts)
        memory = self.memory(seen.features[self.level])  # once per image, then gathered to the questions
        h, w = memory.shape[-2:]
        position = sine_position_encoding_2d(h, w, memory.shape[1], memory.device, memory.dtype)
        memory = take_rows(memory.flatten(2).transpose(1, 2), index)  # [B,h*w,D]
        targets = queries.mean(dim=1, keepdim=True) + self.embeddings  # [B,K,D]
        for layer in self.layers:
            targets = layer(targets, memory, position)
        targets = self.norm(targets)
        masks = _rows(head, seen, index, targets).masks
        # the head's masks are the same wherever two instances look alike; a query's own map of the grid picks one
        h, w = masks.shape[-2:]
        grid = fourier_grid(h, w, self.where.out_features, masks.device, masks.dtype)
        union.target_masks = masks + torch.einsum("bkd,hwd->bkhw", self.where(targets), grid)
        union.target_scores = self.objectness(targets)[..., 0]
        return union


def fourier_grid(h: int, w: int, dim: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Fourier features of an h x w grid [h,w,dim] (dim divisible by 4): the sine encoding at dim/4 frequencies per
    axis from one period over the grid to one per 4 cells, spaced geometrically; unit variance per feature."""
    quarter = dim // 4
    highest = max(1.0, min(h, w) / 4)
    freqs = highest ** (torch.arange(quarter, device=device, dtype=torch.float32) / max(1, quarter - 1))
    return sine_position_encoding_2d(h, w, dim, device, dtype, freqs).reshape(h, w, dim) * math.sqrt(2)


@READOUTS.register("concept_teacher")
class ConceptTeacherReadout(_ConceptReadout):
    """Concept queries ask the head in training, the projector's outside it (module docstring)."""

    def forward(
        self, head: MaskHead, seen: ImagePass, index: torch.Tensor, queries: torch.Tensor, concepts: list[str] | None
    ) -> Readout:
        self.check_single(queries)
        if concepts is None:
            out = _rows(head, seen, index, queries)
            return Readout(out.masks[:, 0], [a[:, 0] for a in out.aux])
        ids = self.ids(concepts)
        out = _rows(head, seen, index, self.queries(ids).unsqueeze(1))
        return Readout(out.masks[:, 0], [a[:, 0] for a in out.aux], terms=self.teach(queries, ids))


@READOUTS.register("concept_choice")
class ConceptChoiceReadout(_ConceptReadout):
    """Every concept query asks the head once per image; each pixel goes to at most one concept (module docstring)."""

    def forward(
        self, head: MaskHead, seen: ImagePass, index: torch.Tensor, queries: torch.Tensor, concepts: list[str] | None
    ) -> Readout:
        self.check_single(queries)
        every = head.decode(seen.pixels, self.queries.weight.unsqueeze(0).expand(seen.images, -1, -1))
        if concepts is None:
            ids, terms = self.route(queries), {}
            notes = {"routed": [self.concepts[i] for i in ids.tolist()]}
        else:
            ids, notes = self.ids(concepts), {}
            terms = self.teach(queries, ids)
        return Readout(
            self.choose(take_rows(every.masks, index), ids),
            [self.choose(take_rows(a, index), ids) for a in every.aux],
            terms=terms,
            notes=notes,
        )

    @staticmethod
    def choose(masks: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """[B,h,w] log-odds that concept ``ids`` [B] wins each pixel, from every concept's logits [B,K,h,w]."""
        rows = torch.arange(masks.shape[0], device=masks.device)
        own = masks[rows, ids]
        chosen = F.one_hot(ids, masks.shape[1]).bool()[:, :, None, None]
        rivals = torch.cat([masks.masked_fill(chosen, float("-inf")), torch.zeros_like(own)[:, None]], dim=1)
        return own - torch.logsumexp(rivals, dim=1)
