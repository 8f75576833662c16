"""Prompt assembly: a text template with tags, tokenised piece by piece so every position is known exactly.

Tags (as in the reference code, whose loader splits its prompt on its tags and encodes the text between them with
``add_special_tokens=False``):

- ``<image>``: the visual tokens, spliced in as embeddings exactly where the tag stands;
- ``<question>``: the tokens of ``" " + question``;
- ``[SEG]``: the ``[SEG]`` token;
- ``<answer>``: the answer text (answer template only; the whole answer template is supervised);
- ``<eos>``: the tokenizer's eos token (its text differs between tokenizers, hence a tag).

``{system}`` in the prompt template is replaced by the system text before the split.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from framework.core.errors import ConfigError, DataError

IMAGE, QUESTION, SEG, ANSWER, EOS = "<image>", "<question>", "[SEG]", "<answer>", "<eos>"
_TAG_SPLIT = re.compile("(" + "|".join(re.escape(tag) for tag in (IMAGE, QUESTION, SEG, ANSWER, EOS)) + ")")
IGNORE_INDEX = -100


def _split(text: str, allowed: set[str], exactly_once: set[str], at_most_once: set[str], where: str) -> list[str]:
    pieces = [piece for piece in _TAG_SPLIT.split(text) if piece]
    for tag in {IMAGE, QUESTION, SEG, ANSWER, EOS} - allowed:
        if tag in pieces:
            raise ConfigError(f"llm.{where}: '{tag}' may not appear here (allowed tags: {', '.join(sorted(allowed))})")
    for tag in exactly_once:
        if pieces.count(tag) != 1:
            raise ConfigError(f"llm.{where}: needs '{tag}' exactly once, found {pieces.count(tag)} in {text!r}")
    for tag in at_most_once:
        if pieces.count(tag) > 1:
            raise ConfigError(f"llm.{where}: '{tag}' may appear at most once, found {pieces.count(tag)}")
    return pieces


def parse_prompt(template: str, system: str) -> list[str]:
    """The prompt template, ``{system}`` filled in, split into text pieces and tags (validated)."""
    return _split(
        template.replace("{system}", system),
        allowed={IMAGE, QUESTION, SEG, EOS},
        exactly_once={QUESTION},
        at_most_once={IMAGE, SEG},
        where="template",
    )


def parse_answer(answer_template: str | None) -> list[str] | None:
    """The answer template split into text pieces and tags, or None (no LM loss)."""
    if answer_template is None:
        return None
    return _split(answer_template, allowed={SEG, ANSWER, EOS}, exactly_once={ANSWER}, at_most_once=set(),
                  where="answer_template")


@dataclass
class PromptLayout:
    """One sample's token sequence and where everything sits in it (positions index ``ids``).

    ``ids`` holds the pad id at the image positions (their embeddings are replaced by visual tokens).
    ``span_positions``: the description span, question tokens then ``[SEG]``. ``label_positions``: the
    answer-template tokens (supervised), empty without an answer. ``question_start``: where the question begins;
    everything before it (constant text and the visual tokens) is the same for every question of one image.
    """

    ids: list[int]
    question_start: int
    image_positions: list[int]
    span_positions: list[int]
    seg_position: int | None
    last_prompt_position: int
    label_positions: list[int]


@dataclass
class PromptBatch:
    """Right-padded batch of layouts. Shapes: ``input_ids``, ``attention_mask``, ``image_mask``, ``labels``
    [B,T]; ``span_index``, ``span_mask`` [B,L]; ``last_index``, ``seg_index`` [B] (``seg_index`` None when the
    prompt has no ``[SEG]``)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    image_mask: torch.Tensor
    labels: torch.Tensor
    span_index: torch.Tensor
    span_mask: torch.Tensor
    last_index: torch.Tensor
    seg_index: torch.Tensor | None


class PromptBuilder:
    """Turns (question, number of visual tokens, answer) into a ``PromptLayout`` with a given tokenizer."""

    def __init__(self, tokenizer, prompt: list[str], answer: list[str] | None, seg_token_id: int) -> None:
        self.tokenizer = tokenizer
        self.seg_token_id = seg_token_id
        self.uses_image = IMAGE in prompt
        self.has_seg = SEG in prompt
        self.has_answer = answer is not None
        if EOS in prompt + (answer or []) and tokenizer.eos_token_id is None:
            raise ConfigError("llm: the template uses '<eos>' but the tokenizer has no eos token")
        self._prompt = [self._encode_constant(piece) for piece in prompt]
        self._answer = [self._encode_constant(piece) for piece in answer or []]

    def _encode_constant(self, piece: str) -> tuple[str | None, list[int]]:
        """(tag, ids): constant pieces get their ids once; ``<image>``, ``<question>``, ``<answer>`` are filled
        per sample. Text pieces have the tag None."""
        if piece in (IMAGE, QUESTION, ANSWER):
            return piece, []
        if piece == SEG:
            return SEG, [self.seg_token_id]
        if piece == EOS:
            return EOS, [self.tokenizer.eos_token_id]
        return None, self.tokenizer.encode(piece, add_special_tokens=False)

    def encode_text(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def stop_ids(self) -> set[int]:
        """Token ids that end a generated answer: eos, and ``[SEG]`` (the answer template puts it after the
        answer)."""
        return {self.tokenizer.eos_token_id, self.seg_token_id} - {None}

    def answer_text(self, generated: list[int]) -> str:
        """The ``<answer>`` part of generated ids: decoded up to the first stop id, with the answer template's
        constant text before and after ``<answer>`` removed where it was generated."""
        stops = self.stop_ids()
        end = next((i for i, token in enumerate(generated) if token in stops), len(generated))
        text = self.tokenizer.decode(generated[:end], skip_special_tokens=True)
        tags = [tag for tag, _ in self._answer]
        before = "".join(self.tokenizer.decode(ids) for tag, ids in self._answer[: tags.index(ANSWER)] if tag is None)
        after = self._answer[tags.index(ANSWER) + 1 :]
        after_text = self.tokenizer.decode(after[0][1]) if after and after[0][0] is None else ""
        if before.strip() and text.strip().startswith(before.strip()):
            text = text.strip()[len(before.strip()) :]
        if after_text.strip() and text.rstrip().endswith(after_text.strip()):
            text = text.rstrip()[: -len(after_text.strip())]
        return text.strip()

    def layout(self, question: str, num_image_tokens: int, answer: str | None = None) -> PromptLayout:
        """The sample's layout; ``answer`` is ignored when the builder has no answer template."""
        ids: list[int] = []
        image: list[int] = []
        question_positions: list[int] = []
        question_start = 0
        seg_position = None
        for tag, piece_ids in self._prompt:
            start = len(ids)
            if tag == IMAGE:
                ids += [self.tokenizer.pad_token_id] * num_image_tokens
                image = list(range(start, len(ids)))
            elif tag == QUESTION:
                question_start = start
                ids += self.encode_text(" " + question)  # the reference encodes " " + instruction
                question_positions = list(range(start, len(ids)))
            else:
                seg_position = start if tag == SEG else seg_position
                ids += piece_ids
        if not question_positions and seg_position is None:
            raise DataError(f"question {question!r} encodes to no tokens and the prompt has no [SEG]")
        last_prompt_position = len(ids) - 1
        if answer is not None and self.has_answer:
            for tag, piece_ids in self._answer:
                ids += self.encode_text(answer) if tag == ANSWER else piece_ids
        span = sorted(question_positions + ([seg_position] if seg_position is not None else []))
        return PromptLayout(
            ids=ids,
            question_start=question_start,
            image_positions=image,
            span_positions=span,
            seg_position=seg_position,
            last_prompt_position=last_prompt_position,
            label_positions=list(range(last_prompt_position + 1, len(ids))),
        )


def collate(layouts: list[PromptLayout], pad_id: int, device: torch.device) -> PromptBatch:
    """Right-pad the layouts into tensors on ``device``."""
    batch, length = len(layouts), max(len(lay.ids) for lay in layouts)
    span_length = max(len(lay.span_positions) for lay in layouts)
    input_ids = torch.full((batch, length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros(batch, length, dtype=torch.long)
    image_mask = torch.zeros(batch, length, dtype=torch.bool)
    labels = torch.full((batch, length), IGNORE_INDEX, dtype=torch.long)
    span_index = torch.zeros(batch, span_length, dtype=torch.long)
    span_mask = torch.zeros(batch, span_length, dtype=torch.bool)
    for row, lay in enumerate(layouts):
        input_ids[row, : len(lay.ids)] = torch.tensor(lay.ids)
        attention_mask[row, : len(lay.ids)] = 1
        image_mask[row, lay.image_positions] = True
        labels[row, lay.label_positions] = input_ids[row, lay.label_positions]
        span_index[row, : len(lay.span_positions)] = torch.tensor(lay.span_positions)
        span_mask[row, : len(lay.span_positions)] = True
    has_seg = layouts[0].seg_position is not None
    return PromptBatch(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        image_mask=image_mask.to(device),
        labels=labels.to(device),
        span_index=span_index.to(device),
        span_mask=span_mask.to(device),
        last_index=torch.tensor([lay.last_prompt_position for lay in layouts], device=device),
        seg_index=torch.tensor([lay.seg_position for lay in layouts], device=device) if has_seg else None,
    )
