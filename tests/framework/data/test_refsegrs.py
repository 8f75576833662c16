import numpy as np
import pytest
from PIL import Image

from framework.core.errors import DataError
from framework.data.refsegrs import RefSegRSDataset

TARGET = np.zeros((20, 20), bool)
TARGET[5:15, 2:9] = True


def write_refsegrs(root, lines, ids=("12", "3")):
    for folder in ("images", "masks"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for i in ids:
        Image.fromarray(np.full((20, 20, 3), int(i) * 10, np.uint8)).save(root / "images" / f"{i}.tif")
        mask = TARGET.astype(np.uint8) * 255
        mask[0, 0] = 128  # a stray value: still target here (the reference would keep 128 as the label)
        Image.fromarray(mask).save(root / "masks" / f"{i}.tif")
    (root / "output_phrase_train.txt").write_text("\n".join(lines) + "\n")
    return str(root)


def test_every_line_is_a_sample(tmp_path):
    root = write_refsegrs(tmp_path, ["12 the road on the left", "3\t building near the lake  ", "", "12 left road"])
    ds = RefSegRSDataset(root, "train", image_size=20)
    assert [(s.stem, s.question) for s in ds.samples] == [
        ("12", "the road on the left"),
        ("3", "building near the lake"),
        ("12", "left road"),
    ]
    item = ds[1]
    expected = TARGET.copy()
    expected[0, 0] = True
    np.testing.assert_array_equal(item["mask"].numpy(), expected)
    assert item["mask"].max() == 1 and item["answer"] == "" and abs(float(item["image"][0, 10, 10]) - 30 / 255) < 1e-6
    first = RefSegRSDataset(root, "train", image_size=20, questions="first")
    assert [s.question for s in first.samples] == ["the road on the left", "building near the lake"]


@pytest.mark.parametrize(
    "bad_line,message",
    [("road without id", r"output_phrase_train\.txt:2: expected '<id> <phrase>'"), ("12", "expected"),
     ("77 no such image", r"output_phrase_train\.txt:2: .*images/77\.tif and .*masks/77\.tif not found")],
)
def test_bad_lines_name_file_and_line(tmp_path, bad_line, message):
    root = write_refsegrs(tmp_path, ["12 road", bad_line, "3 house"])
    with pytest.raises(DataError, match=message):
        RefSegRSDataset(root, "train", image_size=20)
    ds = RefSegRSDataset(root, "train", image_size=20, on_bad_sample="skip")
    assert [s.stem for s in ds.samples] == ["12", "3"]
    assert [file for file, _ in ds.skipped] == [f"{tmp_path}/output_phrase_train.txt:2"]


def test_missing_phrase_file(tmp_path):
    write_refsegrs(tmp_path, ["12 road"])
    with pytest.raises(DataError, match=r"output_phrase_val\.txt: RefSegRS phrase file for split 'val' not found"):
        RefSegRSDataset(str(tmp_path), "val", image_size=20)
