"""The real `segearth` CLI, end to end on a tiny config in a temp dir, and its answers to bad input."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml

from framework.cli.main import main
from tests.tiny import tiny_config, write_config

REPO = Path(__file__).resolve().parents[3]


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "framework.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=300,
    )


def test_help_of_every_command(capsys):
    for args in (["--help"], ["fit", "--help"], ["test", "--help"], ["validate", "--help"], ["data", "synth", "--help"], ["components", "--help"]):
        with pytest.raises(SystemExit) as exit_:
            main(args)
        assert exit_.value.code == 0
    assert "--ckpt" in capsys.readouterr().out


def test_components_lists_every_slot(capsys):
    assert main(["components"]) == 0
    out = capsys.readouterr().out
    for slot in ("encoder:", "compressor:", "llm:", "projector:", "mask_head:", "dataset:"):
        assert slot in out
    assert "efficientnet_lite" in out and "variant: int = 0" in out


@pytest.mark.slow
def test_fit_then_test_end_to_end(tmp_path, synth_root, mlflow_uri):
    cfg = tiny_config(data={"root": str(synth_root)}, output_dir=str(tmp_path / "runs"))
    cfg["model"]["llm"] = {**cfg["model"]["llm"], "answer_template": " A: <answer><eos>"}  # the LM loss too
    cfg["predict"] = {"answer_tokens": 8}
    cfg["tracking"] = {"experiment": "cli-e2e"}
    path = write_config(tmp_path / "tiny.yaml", cfg)
    assert main(["fit", str(path), "trainer.limit_train_batches=2"]) == 0
    runs = list((tmp_path / "runs" / "tiny").iterdir())
    assert len(runs) == 1
    run = runs[0]
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["trainer"]["limit_train_batches"] == 2 and saved["model"]["encoder"]["name"] == "efficientnet_lite"
    assert (run / "checkpoints" / "last.ckpt").exists() and (run / "checkpoints" / "best.ckpt").exists()

    assert main(["test", str(path), "--ckpt", "best"]) == 0
    results = json.loads((run / "results.json").read_text())
    metrics = results["test"]["metrics"]
    assert metrics["n"] == len(list((synth_root / "test" / "QAs").iterdir()))
    assert 0 <= metrics["giou"] <= 1 and "test_shuffled" in results
    assert "floor: always predict empty" in (run / "results.md").read_text()
    said = [sample for sample in results["test"]["samples"] if "answer" in sample]
    assert len(said) == metrics["n"] == metrics["answer_n"] and 0 <= metrics["answer_f1"] <= 1
    assert "answer_f1" not in results["test_shuffled"]["metrics"]  # the shuffled control moved its references too
    assert all(isinstance(s["answer"], str) and s["reference_answer"] for s in said)
    assert "Answer text (" in (run / "results.md").read_text()

    client = mlflow.MlflowClient(mlflow_uri)
    exp = client.get_experiment_by_name("cli-e2e")
    fit_run = client.search_runs([exp.experiment_id], filter_string="attributes.run_name = 'tiny-fit'")[0]
    assert fit_run.data.params["model.encoder.name"] == "efficientnet_lite"
    assert "train/loss_step" in fit_run.data.metrics or "train/loss_epoch" in fit_run.data.metrics
    artifacts = [a.path for a in client.list_artifacts(fit_run.info.run_id)]
    assert "config.yaml" in artifacts


BAD_INPUTS = {
    "malformed_yaml": ("name: x\nmodel: {encoder: [\n", r"bad\.yaml:\d+: malformed YAML"),
    "unknown_component": (None, "unknown encoder 'efficientnet_lyte'"),
    "unknown_key": (None, "unknown top-level key 'modle'"),
    "wrong_type": (None, "data.image_size"),
    "missing_data_dir": (None, "data directory not found"),
    "base_cycle": ("base: bad.yaml\nname: x\n", "cycle"),
    "trainer_value_lightning_refuses": (None, r"trainer: `Trainer\(devices=0\)` value is not a valid input"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_exits_2_with_one_line(case, tmp_path):
    text, expected = BAD_INPUTS[case]
    cfg = tiny_config(data={"root": str(tmp_path / "nowhere")})
    if case == "unknown_component":
        cfg["model"]["encoder"]["name"] = "efficientnet_lyte"
    elif case == "unknown_key":
        cfg["modle"] = {}
    elif case == "wrong_type":
        cfg["data"]["image_size"] = "big"
    elif case == "trainer_value_lightning_refuses":
        cfg["trainer"]["devices"] = 0
    path = tmp_path / "bad.yaml"
    if text is None:
        write_config(path, cfg)
    else:
        path.write_text(text)
    result = run_cli(["fit", str(path)], cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("segearth: error:"), result.stderr
    assert re.search(expected, lines[0]), lines[0]
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlruns.db").exists()


def test_bug_keeps_its_traceback(monkeypatch):
    """A programming error is not dressed up as a user error: main lets it through with its traceback."""
    from framework.cli import components

    def broken(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(components, "run", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["components"])


def test_validate_reports_both_frames(tmp_path, synth_root, capsys):
    cfg = tiny_config(data={"root": str(synth_root)}, output_dir=str(tmp_path / "runs"))
    cfg["tracking"] = {"enabled": False}
    path = write_config(tmp_path / "tiny.yaml", cfg)
    assert main(["validate", str(path), "--out", str(tmp_path / "out")]) == 0
    results = json.loads((tmp_path / "out" / "results_validate.json").read_text())["val"]
    assert results["n"] == results["native/n"] == len(list((synth_root / "val" / "QAs").iterdir()))
    for key in ("giou", "ciou", "pr_0.5", "floor_empty_giou", "floor_full_giou", "n_acc", "t_acc", "n_empty"):
        assert key in results and f"native/{key}" in results
    table = (tmp_path / "out" / "results_validate.md").read_text()
    assert table.strip() in capsys.readouterr().out  # printed as written
    header = next(line for line in table.splitlines() if line.startswith("| tiny · val split"))
    assert header.endswith("| gIoU | cIoU | Pr@0.5 | N-acc | T-acc | native gIoU | native cIoU | native Pr@0.5 | "
                           "native N-acc | native T-acc |")
    assert "| floor: always predict the whole image |" in table and "Empty-target samples:" in table
    assert not (tmp_path / "out" / "overlays").exists() and not (tmp_path / "runs").exists()


def _late_bad_input(case: str, tmp_path: Path, synth_root: Path) -> list[str]:
    """Arguments of a mistake found only once the model or a checkpoint is in hand."""
    cfg = tiny_config(data={"root": str(synth_root)}, output_dir=str(tmp_path / "runs"))
    path = write_config(tmp_path / "tiny.yaml", cfg)
    if case == "image_size_not_a_stride_multiple":
        return ["fit", str(path), "data.image_size=72"]
    if case == "component_cannot_be_built":
        return ["fit", str(path), "model.mask_head.dim=0"]
    from framework.core.config import load_config
    from tests.framework.infer.test_bundle import write_checkpoint

    ckpt = write_checkpoint(load_config(path), tmp_path / "trained" / "checkpoints" / "last.ckpt")
    if case.endswith("checkpoint_of_another_config"):
        command = "fit" if case.startswith("resume") else "test"
        return [command, str(path), "--resume" if command == "fit" else "--ckpt", str(ckpt), "model.mask_head.dim=8"]
    if case.endswith("truncated_checkpoint"):
        cut = tmp_path / "cut.ckpt"
        cut.write_bytes(ckpt.read_bytes()[:100_000])
        return ["fit", str(path), "--resume", str(cut)] if case.startswith("resume") else ["test", str(path), "--ckpt", str(cut)]
    image = sorted((synth_root / "test" / "images").iterdir())[0]
    out = "/proc/nope/out" if case == "out_cannot_be_made" else str(path / "out")
    return ["predict", "--model", str(ckpt), "--image", str(image), "--question", "Where?", "--out", out]


LATE_BAD_INPUTS = {
    "image_size_not_a_stride_multiple": r"data\.image_size 72 is not a multiple of the encoder's largest stride 32 "
                                        r"\(e\.g\. 64 or 96\)",
    "checkpoint_of_another_config": r"last\.ckpt: the checkpoint does not fit the model of this config \(\d+ tensors "
                                    r"of another shape, 0 missing, 0 unexpected; first mask_head\.",
    "out_cannot_be_made": r"--out /proc/nope/out: cannot make a folder there",
    "truncated_checkpoint": r"cut\.ckpt: cannot read checkpoint \(PytorchStreamReader failed",
    "out_under_a_file": r"--out .*tiny\.yaml/out: .*tiny\.yaml is not a folder",
    "resume_from_checkpoint_of_another_config": r"last\.ckpt: the checkpoint does not fit the model of this config",
    "resume_from_truncated_checkpoint": r"cut\.ckpt: cannot read checkpoint \(PytorchStreamReader failed",
    "component_cannot_be_built": r"model\.mask_head: mask_head 'fpn' with dim=0, query_dim=32 cannot be built "
                                 r"\(ValueError: ",
}


@pytest.mark.parametrize("case", sorted(LATE_BAD_INPUTS))
def test_bad_input_found_late_exits_2_with_one_line_and_writes_nothing(case, tmp_path, synth_root):
    args = _late_bad_input(case, tmp_path, synth_root)
    before = sorted(p for p in tmp_path.rglob("*"))
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("segearth: error:")]
    assert len(errors) == 1 and re.search(LATE_BAD_INPUTS[case], errors[0]), result.stderr[-3000:]
    written = [p for p in tmp_path.rglob("*") if p not in before and p.is_file() and p.name != "mlruns.db"]
    assert not written, written  # no run folder, no results, no predictions
