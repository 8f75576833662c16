"""The results table names the data split that was evaluated and keeps the controls and floors beside the model."""

import pytest

from framework.eval.report import results_table

METRICS = {"n": 4, "giou": 0.5, "ciou": 0.6, "pr_0.5": 0.25, "floor_empty_giou": 0.25, "floor_full_giou": 0.1,
           "n_empty": 1, "n_acc": 1.0, "t_acc": 2 / 3, "floor_empty_n_acc": 1.0, "floor_empty_t_acc": 0.0}


@pytest.mark.parametrize("test_split", ["test", "val"])
def test_the_table_names_the_evaluated_split(test_split):
    cfg = {"name": "exp", "data": {"image_size": 64, "test_split": test_split}}
    results = {"test": {"metrics": METRICS, "samples": []}, "test_shuffled": {"metrics": {"giou": 0.125}}}
    lines = results_table(results, cfg).splitlines()
    assert lines[2] == f"| exp · {test_split} split (n=4) | gIoU | cIoU | Pr@0.5 | N-acc | T-acc |"
    assert lines[4] == "| model, true questions | 0.500 | 0.600 | 0.250 | 1.000 | 0.667 |"
    assert lines[5].startswith("| model, questions shuffled across images | 0.125 |")
    assert lines[6] == "| floor: always predict empty | 0.250 | – | – | 1.000 | 0.000 |"
    assert any(line.startswith("Empty-target samples: 1 of 4. N-acc: share of them answered") for line in lines)
