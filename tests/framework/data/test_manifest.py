import json

import numpy as np
import pytest
from PIL import Image

from framework.core.errors import DataError
from framework.data.manifest import ManifestDataset
from framework.data.samples import NO_TARGET_ANSWER

TARGET = np.zeros((16, 24), bool)
TARGET[4:10, 3:20] = True


def write_files(root):
    (root / "img").mkdir(parents=True)
    (root / "lbl").mkdir()
    for name in ("a", "b"):
        Image.fromarray(np.full((16, 24, 3), 90, np.uint8)).save(root / "img" / f"{name}.png")
        Image.fromarray(TARGET.astype(np.uint8) * 255).save(root / "lbl" / f"{name}.png")


def write_csv(root, rows, header="image,mask,question,answer,concept"):
    write_files(root)
    (root / "train.csv").write_text("\n".join([header, *rows]) + "\n")
    return str(root)


def write_jsonl(root, rows):
    write_files(root)
    (root / "train.jsonl").write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return str(root)


def test_csv_rows_relative_paths_and_no_target_rows(tmp_path):
    root = write_csv(
        tmp_path,
        [
            'img/a.png,lbl/a.png,"Which area, if any, is paved?",the car park,parking',
            "img/a.png,lbl/a.png,where can cars stand?,,parking",
            "img/b.png,,where is the lake?,,water",
        ],
    )
    ds = ManifestDataset(root, "train", image_size=24)
    assert [(s.stem, s.question, s.answer, s.has_target, s.concept) for s in ds.samples] == [
        ("img/a", "Which area, if any, is paved?", "the car park", True, "parking"),
        ("img/a", "where can cars stand?", "", True, "parking"),
        ("img/b", "where is the lake?", NO_TARGET_ANSWER, False, "water"),
    ]
    assert ds.samples[0].image == tmp_path / "img" / "a.png"
    np.testing.assert_array_equal(ds.load(ds.samples[0])[1], TARGET)
    empty = ds[2]
    assert empty["mask"].shape == (24, 24) and empty["mask"].sum() == 0
    first = ManifestDataset(root, "train", image_size=24, questions="first")
    assert [s.question for s in first.samples] == ["Which area, if any, is paved?", "where is the lake?"]


def test_jsonl_with_null_mask_and_scale(tmp_path):
    root = write_jsonl(
        tmp_path,
        [{"image": "img/a.png", "mask": "lbl/a.png", "question": "q1"}, "",
         {"image": "g16.png", "mask": None, "question": "q2", "answer": "nothing here"}],
    )
    Image.fromarray(np.full((16, 24), 4000, np.uint16)).save(tmp_path / "g16.png")
    ds = ManifestDataset(root, "train", image_size=24, scale=40.0)
    assert [(s.question, s.answer, s.has_target) for s in ds.samples] == [
        ("q1", "", True),
        ("q2", "nothing here", False),
    ]
    assert abs(float(ds[1]["image"][0, 12, 12]) - 100 / 255) < 1e-6  # 4000 / 40 = 100


@pytest.mark.parametrize(
    "rows,message",
    [
        (["img/a.png,lbl/a.png,,x,y"], r"train\.csv:2: empty question"),
        (["img/a.png,lbl/a.png,q,x,y", "img/zz.png,lbl/a.png,q,x,y"], r"train\.csv:3: .*img/zz\.png not found"),
        (["img/a.png,lbl/missing.png,q,x,y"], r"train\.csv:2: .*lbl/missing\.png not found"),
        (["img/a.png,lbl/a.png,q"], r"train\.csv:2: 3 fields where the header has 5"),
    ],
)
def test_bad_csv_rows_name_file_and_line(tmp_path, rows, message):
    root = write_csv(tmp_path, rows)
    with pytest.raises(DataError, match=message):
        ManifestDataset(root, "train", image_size=24)


def test_missing_column(tmp_path):
    root = write_csv(tmp_path, ["img/a.png,q"], header="image,question")
    with pytest.raises(DataError, match=r"train\.csv:1: missing column\(s\) mask"):
        ManifestDataset(root, "train", image_size=24, on_bad_sample="skip")


def test_bad_jsonl_rows_are_skipped_and_listed(tmp_path):
    root = write_jsonl(
        tmp_path,
        [{"image": "img/a.png", "mask": "lbl/a.png", "question": "ok"}, "{broken",
         {"image": "img/a.png", "question": "no mask key"}, {"image": "img/a.png", "mask": "", "question": " "},
         {"image": 3, "mask": "", "question": "q"}],
    )
    with pytest.raises(DataError, match=r"train\.jsonl:2: invalid JSON"):
        ManifestDataset(root, "train", image_size=24)
    ds = ManifestDataset(root, "train", image_size=24, on_bad_sample="skip")
    assert [s.question for s in ds.samples] == ["ok"]
    reasons = {file.rsplit(":", 1)[1]: reason for file, reason in ds.skipped}
    assert set(reasons) == {"2", "3", "4", "5"}
    assert "missing mask" in reasons["3"] and "empty question" in reasons["4"]
    assert "'image' must be text" in reasons["5"]


def test_exactly_one_manifest(tmp_path):
    write_csv(tmp_path, ["img/a.png,lbl/a.png,q,,"])
    (tmp_path / "train.jsonl").write_text("")
    with pytest.raises(DataError, match=r"both of train\.csv and train\.jsonl"):
        ManifestDataset(str(tmp_path), "train", image_size=24)
    with pytest.raises(DataError, match=r"neither of val\.csv and val\.jsonl"):
        ManifestDataset(str(tmp_path), "val", image_size=24)
