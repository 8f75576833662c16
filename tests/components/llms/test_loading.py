"""The de-quantised GGUF cache: its checksum manifest, what counts as damage, and a damaged cache of the real
SmolLM2 rebuilt with a message."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from components.llms import _loading
from components.llms._loading import (
    CACHE_MANIFEST,
    cache_damage,
    dequantise_gguf_once,
    weights_folder,
    write_cache_manifest,
)
from tests.components.llms.test_hf_causal_lm import SMOLLM2


def _folder(tmp_path: Path) -> Path:
    folder = tmp_path / "cache"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(bytes(range(256)) * 64)
    (folder / "config.json").write_text('{"model_type": "llama"}')
    write_cache_manifest(folder)
    return folder


def _truncate(folder: Path) -> None:
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:1000])


def _flip_a_byte(folder: Path) -> None:
    path = folder / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[5000] ^= 1
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, reason", [
    (lambda f: None, None),
    (_truncate, "model.safetensors is 1000 bytes, 16384 expected"),
    (_flip_a_byte, "model.safetensors does not match its checksum"),
    (lambda f: (f / "config.json").unlink(), "config.json is missing"),
    (lambda f: (f / CACHE_MANIFEST).unlink(), f"no readable {CACHE_MANIFEST}"),
    (lambda f: (f / CACHE_MANIFEST).write_text('{"model.safe'), f"no readable {CACHE_MANIFEST}"),
], ids=["whole", "truncated", "changed", "file missing", "no manifest", "manifest cut short"])
def test_cache_damage(tmp_path, damage, reason):
    folder = _folder(tmp_path)
    damage(folder)
    found = cache_damage(folder)
    assert found == reason if reason is None else found.startswith(reason)


@pytest.mark.slow
def test_a_truncated_smollm2_cache_is_detected_and_rebuilt(tmp_path, caplog):
    """A de-quantised SmolLM2 cache cut short (as by a disk that filled, or a half copy) is said so and rebuilt
    whole; the rebuilt cache passes its manifest and loads."""
    pytest.importorskip("gguf")
    folder = weights_folder(None, SMOLLM2["package"])
    cache = tmp_path / "smollm2"
    dequantise_gguf_once(folder, SMOLLM2["gguf_file"], cache)
    whole = {p.name: p.stat().st_size for p in cache.iterdir()}
    _truncate(cache)
    _loading._WHOLE_CACHES.discard(cache)  # as a new process would: checked again
    with caplog.at_level(logging.WARNING, logger=_loading.__name__):
        dequantise_gguf_once(folder, SMOLLM2["gguf_file"], cache)
    assert f"the de-quantised LLM cache {cache} is damaged (model.safetensors is 1000 bytes" in caplog.text
    assert {p.name: p.stat().st_size for p in cache.iterdir()} == whole and cache_damage(cache) is None
    shutil.rmtree(cache)
