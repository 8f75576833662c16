"""benchmarks/gpu_train.py: the CPU smoke mode runs every preset end to end and writes its JSON and table; the
estimate mode counts the full-size presets' parameters; without CUDA the real run refuses with a clear message."""

import json

import pytest
import torch

from benchmarks.gpu_train import PRESETS, main
from framework.core.slots import SLOT_NAMES


def test_smoke_run_writes_json_and_table(tmp_path):
    report = main(["--smoke", "--steps", "1", "--out", str(tmp_path)])
    assert json.loads((tmp_path / "gpu_train.json").read_text()) == report
    table = (tmp_path / "gpu_train.md").read_text()
    assert [r["preset"] for r in report["results"]] == list(PRESETS)
    for result in report["results"]:
        assert result["finite_losses"] and result["samples_per_s"] > 0 and result["tflop_per_step"] > 0
        parts = result["breakdown_ms"]
        assert set(SLOT_NAMES) | {"loss", "backward", "optimizer"} <= set(parts)
        assert all(parts[k] > 0 for k in ("encoder", "compressor", "llm", "projector", "mask_head", "backward"))
        assert f"| {result['preset']} | 1 | {result['samples_per_s']} |" in table
    lora, full = (report["results"][i]["slots"]["llm"] for i in (0, 1))
    assert lora["frozen_M"] > 0 and full["frozen_M"] == 0  # 24gb: LoRA on a frozen LLM; faithful: full fine-tuning


def test_estimate_counts_the_full_size_presets(tmp_path):
    report = main(["--estimate", "--out", str(tmp_path)])
    small, faithful = report["results"]
    assert faithful["slots"]["llm"]["trainable_M"] == pytest.approx(1414.6, abs=0.1)  # Phi-1.5 + [SEG]/[PAD] rows
    assert small["slots"]["llm"]["trainable_M"] < 0.02 * small["slots"]["llm"]["frozen_M"]
    assert small["weights_grads_adam_GiB"] < 6 < 20 < faithful["weights_grads_adam_GiB"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present: the real run would start")
def test_without_cuda_the_real_run_refuses(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--out", str(tmp_path)])
    assert exit_.value.code == 2
    assert "no CUDA device" in capsys.readouterr().err
