"""``hf_causal_lm``: any transformers causal LM as the LLM slot (Phi-1.5 in the reference, SmolLM2 in the demo)."""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from components.llms._loading import (
    add_seg_and_pad_tokens,
    apply_lora,
    keep_first_layers,
    load_causal_lm,
    lora_options,
    torch_dtype,
)
from components.llms._pooling import POOLINGS, AttentionPool, masked_mean
from components.llms._prompt import (
    IGNORE_INDEX,
    IMAGE,
    SEG,
    PromptBatch,
    PromptBuilder,
    PromptLayout,
    collate,
    parse_answer,
    parse_prompt,
)
from framework.core.contracts import LanguageModel, LLMOutput
from framework.core.errors import ConfigError, DataError
from framework.core.registry import LLMS

DEFAULT_SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that the user "
    "provides, and assist the user with a variety of tasks using natural language."
)
DEFAULT_TEMPLATE = (
    "[INST] <<SYS>>\n{system}\n<</SYS>>\n\nThis is an image <image>, Please doing Reasoning Segmentation according "
    "to the following instruction:\n<question>[SEG] [/INST]"
)
# The reference's assistant turn is "Sure, It is <seg>. \n<answer>. <|endoftext|>" with <seg> dropped and <answer>
# replaced by answer + [SEG]: this is the text its LM loss is actually computed on.
DEFAULT_ANSWER_TEMPLATE = " Sure, It is . \n<answer>[SEG]. <eos>"


@LLMS.register("hf_causal_lm")
class HFCausalLM(LanguageModel):
    """A transformers causal LM reading a prompt with visual tokens and a question; returns the description
    embedding.

    Weights, exactly one of: ``path`` (a local HF model folder), ``package`` (an installed pip package carrying
    the weights; located, never imported), ``config`` (an inline transformers config dict with ``model_type``,
    random init). ``gguf_file`` names a GGUF file inside the path/package folder: it is de-quantised once and
    saved (model + tokenizer) to ``cache_dir`` (default ``$SEGEARTH_CACHE/llm/<package-or-folder>-<file>-<digest>``,
    ``SEGEARTH_CACHE`` defaulting to ``~/.cache/segearth``), which later runs load in well under a second.

    ``tokenizer``: None = the model's own; ``"byte"`` = a built-in byte-level tokenizer (for inline configs); or a
    local tokenizer folder. ``[SEG]`` is added as an ordinary token and ``[PAD]`` if the tokenizer has no pad
    token; their embedding rows start at the mean of the existing rows.

    Training modes: full fine-tuning is the default; frozen is the framework's generic ``frozen: true`` slot flag;
    LoRA is ``lora: {r, alpha, dropout, target_modules}`` (peft; defaults 8, 16, 0.0, "all-linear"), after which
    only the LoRA tensors of the LLM are trainable (the ``[SEG]``/pad rows stay at their mean initialisation) plus
    the ``attention_pool`` query if that pooling is chosen. ``gradient_checkpointing`` recomputes decoder layers in
    the backward pass (non-reentrant, so gradients still reach visual tokens through a frozen LLM).

    Prompt: ``template`` (tags ``{system}``, ``<image>``, ``<question>``, ``[SEG]``, ``<eos>``; see ``_prompt``)
    and ``answer_template`` (tags ``<answer>``, ``[SEG]``, ``<eos>``; None = no LM loss). Every token of the
    rendered answer template is supervised, as in the reference's llama-2 label masking. ``uses_image`` tells
    whether the prompt takes visual tokens (a compressor must then exist; without ``<image>`` it must not);
    ``prompt_length`` counts a sample's tokens, and a sample longer than ``max_positions`` is a ``DataError``.

    ``pooling``: ``mean`` (reference: mean over question tokens + [SEG]), ``seg_token`` ([SEG] state, LISA-style),
    ``last_token`` (last prompt token; for framing prompts that end in e.g. "which in one word is:"),
    ``attention_pool`` (learned single query over the description span). All read the final hidden states after
    the model's final norm.

    Question cache: while no parameter of this module requires grad, the module is in eval mode, no visual tokens
    are given and no LM loss is asked for, the outputs depend on the question string only; they are memoised per
    question (CPU, LRU of ``question_cache_size`` entries; 0 disables). Each call re-checks those conditions and a
    fingerprint of every parameter (storage, in-place version counter, dtype, device), so trained, reloaded or
    moved weights clear the cache instead of serving stale results.

    ``num_layers``: keep only the first N decoder layers (the final norm and LM head stay): a smaller, faster LLM
    whose early layers keep their pretrained weights. ``visual_gate``: scale the visual tokens by tanh(g) with a
    learned scalar g that starts at 0, so the model starts as the text-only one and learns how much of the image
    to let in (the gate is trained under LoRA too; ``frozen: true`` freezes it with the rest).

    ``embedding_rows``: size of the embedding table after ``[SEG]``/pad are added (default: the tokenizer length,
    as the reference resizes). Set it to keep a reference-sized table with a stand-in tokenizer (e.g. 50297 for
    Phi-1.5 with the ``byte`` tokenizer, so parameter counts and memory match the reference).
    """

    def __init__(
        self,
        path: str | None = None,
        package: str | None = None,
        gguf_file: str | None = None,
        config: dict | None = None,
        cache_dir: str | None = None,
        tokenizer: str | None = None,
        dtype: str = "float32",
        lora: dict | None = None,
        gradient_checkpointing: bool = False,
        system: str = DEFAULT_SYSTEM,
        template: str = DEFAULT_TEMPLATE,
        answer_template: str | None = DEFAULT_ANSWER_TEMPLATE,
        pooling: str = "mean",
        question_cache_size: int = 4096,
        embedding_rows: int | None = None,
        num_layers: int | None = None,
        visual_gate: bool = False,
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"llm.pooling: unknown pooling {pooling!r}; one of: {', '.join(POOLINGS)}")
        prompt_pieces, answer_pieces = parse_prompt(template, system), parse_answer(answer_template)
        if pooling == "seg_token" and SEG not in prompt_pieces:
            raise ConfigError("llm.pooling: 'seg_token' needs '[SEG]' in llm.template")
        if question_cache_size < 0:
            raise ConfigError(f"llm.question_cache_size: must be >= 0, got {question_cache_size}")
        if visual_gate and IMAGE not in prompt_pieces:
            raise ConfigError("llm.visual_gate: the template has no '<image>', so there are no visual tokens to gate")
        lora = None if lora is None else lora_options(lora)
        self.causal_lm, self.tokenizer = load_causal_lm(
            path, package, gguf_file, config, cache_dir, tokenizer, torch_dtype(dtype)
        )
        if num_layers is not None:
            keep_first_layers(self.causal_lm, num_layers)
        self.prompt = PromptBuilder(
            self.tokenizer, prompt_pieces, answer_pieces, add_seg_and_pad_tokens(self.causal_lm, self.tokenizer, embedding_rows)
        )
        if lora is not None:
            apply_lora(self.causal_lm, lora)
        if gradient_checkpointing:
            self.set_grad_checkpointing(True)
        text_config = self.causal_lm.config.get_text_config()
        self.hidden_size: int = text_config.hidden_size
        self.max_positions: int | None = getattr(text_config, "max_position_embeddings", None)
        self.pooling = pooling
        self.attention_pool = AttentionPool(self.hidden_size) if pooling == "attention_pool" else None
        self.visual_gate = nn.Parameter(torch.zeros(())) if visual_gate else None
        self._cache_size = question_cache_size
        self._cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._cache_fingerprint: tuple | None = None

    @classmethod
    def example_config(cls) -> dict:
        """A 2-layer, 32-wide llama with the byte tokenizer and a short prompt that takes visual tokens."""
        return {
            "config": {
                "model_type": "llama",
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "vocab_size": 257,
                "max_position_embeddings": 512,
            },
            "tokenizer": "byte",
            "template": "<image> Q:<question>[SEG] A:",
        }

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute the decoder layers in the backward pass (transformers' non-reentrant checkpointing); the
        framework's ``grad_checkpointing: true`` slot key calls this."""
        if enable:
            self.causal_lm.activation_checkpointing_enable()
        else:
            self.causal_lm.activation_checkpointing_disable()

    @property
    def uses_image(self) -> bool:
        """Whether the prompt has ``<image>``: then visual tokens are required, else they are refused."""
        return self.prompt.uses_image

    @property
    def answers_in_words(self) -> bool:
        """Whether an answer template is set: ``generate`` then returns the answer text."""
        return self.prompt.has_answer

    @property
    def device(self) -> torch.device:
        return self.causal_lm.get_input_embeddings().weight.device

    def prompt_length(self, question: str, num_visual_tokens: int = 0, answer: str | None = None) -> int:
        """Number of tokens the LLM reads for this sample (prompt, plus the answer template when ``answer`` is
        given and an answer template is set); compare with ``max_positions``."""
        return len(self.prompt.layout(question, num_visual_tokens, answer).ids)

    def forward(
        self,
        questions: list[str],
        visual_tokens: torch.Tensor | None = None,
        answers: list[str] | None = None,
        image_index: torch.Tensor | None = None,
    ) -> LLMOutput:
        """``questions`` (B strings), ``visual_tokens`` [U,N,D] or None, ``answers`` (B strings) or None,
        ``image_index`` [B] (question i reads the visual tokens of image ``image_index[i]``; None: of row i) ->
        ``LLMOutput``: ``pooled`` [B,D], ``tokens`` [B,L,D] (question tokens + [SEG], right-padded with zeros),
        ``token_mask`` [B,L] bool, ``lm_loss`` (scalar, when answers are given and an answer template is set).

        Without gradients and without answers, the prompt before the question (constant text and, when they come
        first, the visual tokens) runs once per image, or once in all when it holds no visual tokens, and its keys
        and values serve each question of it; only the questions' own tokens and what follows them run per
        question."""
        if self.uses_image and visual_tokens is None:
            raise ConfigError(
                "llm.template has '<image>' but no visual tokens arrived (the compressor slot is null): "
                "configure a compressor or drop '<image>' from the template"
            )
        if visual_tokens is not None and not self.uses_image:
            raise ConfigError(
                "llm.template has no '<image>' but the compressor sends visual tokens: "
                "add '<image>' to the template or set the compressor slot to null"
            )
        if answers is not None and len(answers) != len(questions):
            raise ValueError(f"{len(questions)} questions but {len(answers)} answers")
        if visual_tokens is not None and image_index is None and visual_tokens.shape[0] != len(questions):
            raise ValueError(f"{len(questions)} questions, visual tokens of {visual_tokens.shape[0]} images and no "
                             "image_index saying which is whose")
        supervised = answers is not None and self.prompt.has_answer
        if visual_tokens is None and not supervised and self._question_cache_usable():
            return self._cached_forward(questions)
        return self._run(questions, visual_tokens, image_index, answers if supervised else None)

    @torch.no_grad()
    def generate(
        self,
        questions: list[str],
        visual_tokens: torch.Tensor | None = None,
        image_index: torch.Tensor | None = None,
        max_new_tokens: int = 32,
    ) -> list[str]:
        """The greedy answer text to each of ``questions`` (B strings; ``visual_tokens`` [U,N,D] and
        ``image_index`` [B] as in ``forward``): at most ``max_new_tokens`` tokens after the prompt, stopped at eos
        or ``[SEG]``, the answer template's constant text removed. A ConfigError without an answer template (the
        model was never taught an answer's form).

        The rows decode together: the right-padded prompts run once with the key/value cache, then each step feeds
        every row its last token at its own position, the padding masked, until every row has stopped, so a row's
        text is the one it gets alone."""
        if not self.prompt.has_answer:
            raise ConfigError("llm.answer_template is null: this LLM was not trained to answer in words")
        num_visual = 0 if visual_tokens is None else visual_tokens.shape[1]
        if visual_tokens is not None and self.visual_gate is not None:
            visual_tokens = visual_tokens * torch.tanh(self.visual_gate)
        layouts = [self._layout(question, num_visual, None) for question in questions]
        batch = collate(layouts, self.tokenizer.pad_token_id, self.device)
        rows = torch.arange(len(questions), device=self.device) if image_index is None else image_index
        tokens = None if visual_tokens is None else visual_tokens[rows]
        out = self.causal_lm.base_model(inputs_embeds=self._embed(batch.input_ids, batch.image_mask, tokens),
                                        attention_mask=batch.attention_mask, use_cache=True)
        head = self.causal_lm.get_output_embeddings()
        logits = head(out.last_hidden_state[torch.arange(len(questions), device=self.device), batch.last_index])
        lengths = batch.last_index + 1
        mask, cache = batch.attention_mask, out.cache
        limit = min(max_new_tokens, (self.max_positions or 1 << 30) - int(lengths.max()))
        stops = torch.tensor(sorted(self.prompt.stop_ids()), device=self.device)
        generated = torch.empty(len(questions), 0, dtype=torch.long, device=self.device)
        done = torch.zeros(len(questions), dtype=torch.bool, device=self.device)
        for step in range(max(limit, 1)):
            token = logits.argmax(-1)
            generated = torch.cat([generated, token[:, None]], dim=1)
            done |= torch.isin(token, stops)
            if bool(done.all()) or step + 1 >= limit:
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            out = self.causal_lm.base_model(input_ids=token[:, None], attention_mask=mask, cache=cache,
                                            position_ids=(lengths + step)[:, None], use_cache=True)
            cache, logits = out.cache, head(out.last_hidden_state[:, -1])
        return [self.prompt.answer_text(row.tolist()) for row in generated]

    def _layout(self, question: str, num_visual_tokens: int, answer: str | None) -> PromptLayout:
        layout = self.prompt.layout(question, num_visual_tokens, answer)
        if self.max_positions is not None and len(layout.ids) > self.max_positions:
            raise DataError(
                f"llm: a prompt of {len(layout.ids)} tokens ({num_visual_tokens} visual, question of "
                f"{len(question)} characters) exceeds the LLM's max_position_embeddings {self.max_positions}: "
                f"{question[:80]!r}"
            )
        return layout

    def _run(
        self,
        questions: list[str],
        visual_tokens: torch.Tensor | None,
        image_index: torch.Tensor | None,
        answers: list[str] | None,
    ) -> LLMOutput:
        num_visual = 0 if visual_tokens is None else visual_tokens.shape[1]
        layouts = [
            self._layout(question, num_visual, answer)
            for question, answer in zip(questions, answers or [None] * len(questions))
        ]
        batch = collate(layouts, self.tokenizer.pad_token_id, self.device)
        if visual_tokens is not None and self.visual_gate is not None:
            visual_tokens = visual_tokens * torch.tanh(self.visual_gate)
        rows = torch.arange(len(questions), device=self.device) if image_index is None else image_index
        prefix = layouts[0].question_start
        image_first = bool(layouts[0].image_positions) and layouts[0].image_positions[0] < prefix
        prefix_rows = visual_tokens.shape[0] if image_first else 1
        if answers is None and not torch.is_grad_enabled() and prefix and prefix_rows < len(questions):
            hidden = self._shared_prefix_hidden(batch, prefix, visual_tokens, rows, image_first)
        else:
            tokens = None if visual_tokens is None else visual_tokens[rows]
            hidden = self.causal_lm.base_model(
                inputs_embeds=self._embed(batch.input_ids, batch.image_mask, tokens),
                attention_mask=batch.attention_mask,
                use_cache=False,
            ).last_hidden_state
        index = batch.span_index.unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
        tokens = hidden.gather(1, index).masked_fill(~batch.span_mask.unsqueeze(-1), 0)
        return LLMOutput(
            pooled=self._pool(hidden, tokens, batch),
            tokens=tokens,
            token_mask=batch.span_mask,
            lm_loss=None if answers is None else self._lm_loss(hidden, batch.labels),
        )

    def _embed(self, ids: torch.Tensor, image_mask: torch.Tensor, visual_tokens: torch.Tensor | None) -> torch.Tensor:
        """Input embeddings of ``ids`` [R,T] with ``visual_tokens`` [R,N,D] (gated) at ``image_mask`` [R,T]."""
        embeds = self.causal_lm.get_input_embeddings()(ids)
        if visual_tokens is None:
            return embeds
        return embeds.masked_scatter(image_mask.unsqueeze(-1), visual_tokens.to(embeds.dtype))

    def _shared_prefix_hidden(
        self,
        batch: PromptBatch,
        prefix: int,
        visual_tokens: torch.Tensor | None,
        rows: torch.Tensor,
        image_first: bool,
    ) -> torch.Tensor:
        """The final hidden states [B,T,D] of the batch, its first ``prefix`` positions (the same ids for every
        row) run once per image when the visual tokens lie in them (``image_first``), else once; each row then runs
        only its own positions against the prefix's keys and values. The same states as one pass over every
        whole prompt, up to float rounding (positions, causal order and padding are unchanged)."""
        sources = visual_tokens.shape[0] if image_first else 1
        ids = batch.input_ids[:1, :prefix].expand(sources, -1)
        image_mask = batch.image_mask[:1, :prefix].expand(sources, -1)
        head = self.causal_lm.base_model(
            inputs_embeds=self._embed(ids, image_mask, visual_tokens if image_first else None), use_cache=True
        )
        source_rows = rows if image_first else torch.zeros_like(rows)
        cache = head.cache
        cache.batch_select_indices(source_rows)
        suffix_tokens = None if visual_tokens is None or image_first else visual_tokens[rows]
        tail = self.causal_lm.base_model(
            inputs_embeds=self._embed(batch.input_ids[:, prefix:], batch.image_mask[:, prefix:], suffix_tokens),
            attention_mask=batch.attention_mask,
            cache=cache,
            use_cache=True,
        ).last_hidden_state
        return torch.cat([head.last_hidden_state[source_rows], tail], dim=1)

    def _pool(self, hidden: torch.Tensor, tokens: torch.Tensor, batch: PromptBatch) -> torch.Tensor:
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        if self.pooling == "seg_token":
            return hidden[rows, batch.seg_index]
        if self.pooling == "last_token":
            return hidden[rows, batch.last_index]
        if self.pooling == "attention_pool":
            return self.attention_pool(tokens, batch.span_mask)
        return masked_mean(tokens, batch.span_mask)

    def _lm_loss(self, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Next-token cross-entropy, averaged over the supervised tokens of the batch; the LM head runs only on the
        positions that predict one (vocabularies are large)."""
        targets = labels[:, 1:]
        supervised = targets != IGNORE_INDEX
        if not supervised.any():
            return hidden.sum() * 0
        logits = self.causal_lm.get_output_embeddings()(hidden[:, :-1][supervised])
        return F.cross_entropy(logits.float(), targets[supervised])

    def _question_cache_usable(self) -> bool:
        """Whether outputs may come from the question cache; clears it whenever its entries may be stale."""
        parameters = list(self.parameters())
        if self._cache_size == 0 or self.training or any(p.requires_grad for p in parameters):
            self._cache.clear()
            self._cache_fingerprint = None
            return False
        fingerprint = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in parameters)
        if fingerprint != self._cache_fingerprint:
            self._cache.clear()
            self._cache_fingerprint = fingerprint
        return True

    def _cached_forward(self, questions: list[str]) -> LLMOutput:
        unique = list(dict.fromkeys(questions))
        entries = {question: self._cache[question] for question in unique if question in self._cache}
        missing = [question for question in unique if question not in entries]
        if missing:
            with torch.no_grad():
                fresh = self._run(missing, None, None, None)
            for row, question in enumerate(missing):
                entries[question] = (fresh.tokens[row, fresh.token_mask[row]].cpu(), fresh.pooled[row].cpu())
        for question in unique:
            self._cache[question] = entries[question]
            self._cache.move_to_end(question)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        lengths = [entries[question][0].shape[0] for question in questions]
        first_tokens = entries[questions[0]][0]
        tokens = first_tokens.new_zeros(len(questions), max(lengths), first_tokens.shape[-1])
        mask = torch.zeros(len(questions), max(lengths), dtype=torch.bool)
        for row, question in enumerate(questions):
            tokens[row, : lengths[row]] = entries[question][0]
            mask[row, : lengths[row]] = True
        pooled = torch.stack([entries[question][1] for question in questions])
        return LLMOutput(pooled=pooled.to(self.device), tokens=tokens.to(self.device), token_mask=mask.to(self.device))
