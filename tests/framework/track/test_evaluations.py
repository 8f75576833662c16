"""Every evaluation of a run folder is kept in its own folder and listed; the plain names point at the newest;
results written before that layout are kept too."""

import json
import os

from framework.cli.main import main
from framework.track.evaluations import list_evaluations, new_evaluation_dir, point_latest, record_evaluation
from tests.framework.train.test_evaluate import experiment  # noqa: F401  (the module's fixture)


def test_numbering_index_and_latest_links(tmp_path):
    first = new_evaluation_dir(tmp_path, "test", "test")
    second = new_evaluation_dir(tmp_path, "test", "val")
    assert (first.name, second.name) == ("001-test-test", "002-test-val")
    for folder, giou in ((first, 0.25), (second, 0.5)):
        (folder / "results.json").write_text(json.dumps({"giou": giou}))
        record_evaluation(tmp_path, folder, {"split": folder.name.rsplit("-", 1)[1], "giou": giou})
        point_latest(tmp_path, {"results.json": folder / "results.json"})
    assert [(e["evaluation"], e["split"], e["giou"]) for e in list_evaluations(tmp_path)] == [
        ("001-test-test", "test", 0.25), ("002-test-val", "val", 0.5)]
    assert os.readlink(tmp_path / "results.json") == "evaluations/002-test-val/results.json"
    assert json.loads((first / "results.json").read_text()) == {"giou": 0.25}  # not overwritten


def test_results_from_before_the_layout_are_moved_not_lost(tmp_path):
    (tmp_path / "results.json").write_text("{}")
    (tmp_path / "overlays").mkdir()
    (tmp_path / "overlays" / "a.png").write_bytes(b"png")
    folder = new_evaluation_dir(tmp_path, "validate", "val")
    assert folder.name == "001-validate-val"
    kept = tmp_path / "evaluations" / "000-before"
    assert (kept / "results.json").read_text() == "{}" and (kept / "overlays" / "a.png").read_bytes() == b"png"
    assert not (tmp_path / "results.json").exists()


def test_two_tests_of_one_run_are_both_kept_and_listed(experiment, tmp_path, capsys):  # noqa: F811
    config, ckpt = experiment
    out = tmp_path / "run"
    args = ["test", str(config), "--ckpt", str(ckpt), "--out", str(out), "tracking.enabled=false", "eval.overlays=1"]
    assert main(args) == 0
    assert main([*args, "data.test_split=val", "eval.shuffled_control=false"]) == 0
    printed = capsys.readouterr().out
    entries = list_evaluations(out)
    assert [(e["evaluation"], e["split"], e["checkpoint"]) for e in entries] == [
        ("001-test-test", "test", str(ckpt)), ("002-test-val", "val", str(ckpt))]
    first = json.loads((out / "evaluations" / "001-test-test" / "results.json").read_text())
    newest = json.loads((out / "results.json").read_text())
    assert "test_shuffled" in first and "test_shuffled" not in newest  # the first was not overwritten
    assert first["test"]["metrics"]["giou"] == entries[0]["giou"]
    assert len(list((out / "evaluations" / "001-test-test" / "overlays").iterdir())) == 1
    assert os.readlink(out / "overlays") == "evaluations/002-test-val/overlays"
    assert "  001-test-test" in printed and "  002-test-val" in printed and "val of " in printed
    # a newest test that draws no overlays leaves no link to an older test's
    assert main([*args, "eval.overlays=0", "eval.shuffled_control=false"]) == 0
    assert not (out / "overlays").exists() and not (out / "overlays").is_symlink()
    assert (out / "evaluations" / "002-test-val" / "overlays").is_dir()
