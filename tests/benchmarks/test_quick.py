"""``python -m benchmarks --quick`` end to end (the suite's smoke test; no timing assertions): every section runs
and writes its table, the JSON and the markdown agree."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.__main__ import SECTIONS

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_quick_suite_writes_every_section(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--out", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    (result_file,) = tmp_path.glob("*-quick.json")
    result = json.loads(result_file.read_text())
    assert result["mode"] == "quick" and result["complete"] and result["machine"]["cores"] >= 1
    assert [s["key"] for s in result["sections"]] == list(SECTIONS)
    for section in result["sections"]:
        assert section["rows"], section["key"]
        assert all(len(row) == len(section["columns"]) for row in section["rows"]), section["key"]
        for target in section["targets"]:
            assert {"name", "value", "threshold", "op", "met"} <= set(target)
    by_key = {s["key"]: s for s in result["sections"]}
    assert by_key["ceiling"]["data"]["fp32_gflops"] > 0
    stages = [row[0] for row in by_key["forward"]["rows"]]
    assert stages == ["encoder", "compressor", "llm prefill", "projector", "pixel decoder", "transformer decoder",
                      "post-processing", "whole forward"]
    assert {row[1] for row in by_key["compression"]["rows"]} == {
        "none", "conv_stride 4", "conv_stride 16", "conv_stride 64", "avg_pool 16", "perceiver 64"}
    asked = by_key["questions"]
    assert {(row[1].rsplit(" ", 1)[0], row[3]) for row in asked["rows"]} == {
        (where, n) for where in ("one image", "tiled scene") for n in (1, 16)}
    counted = [t for t in asked["targets"] if "once per tile" in t["name"]]
    assert len(counted) == 8 and all(t["met"] for t in counted)  # two models, two inputs, 1 and 16 questions
    (scene,) = by_key["scene"]["rows"]
    assert scene[1] == 121 and scene[3] > 0  # 2,000² in 256-px tiles overlapping by a quarter: 11 x 11
    deformable = by_key["deformable"]["data"]
    assert deformable["max_abs_difference"] < 1e-4 and deformable["copy_gbps"] > 0
    assert 0 < deformable["bandwidth_share"] == pytest.approx(
        deformable["bytes_moved"] / deformable["ours_s"] / 1e9 / deformable["copy_gbps"])
    report = result_file.with_suffix(".md").read_text()
    for section in result["sections"]:
        assert f"## {section['title']}" in report
    assert "--quick" in report
