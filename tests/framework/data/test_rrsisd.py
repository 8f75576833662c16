import collections
import json
import pickle

import numpy as np
import pytest
from PIL import Image

from framework.core.errors import DataError
from framework.data.rrsisd import RRSISDDataset, decode_rle, decode_segmentation, rle_counts_from_string
from framework.data.transforms import letterbox_geometry

RNG = np.random.default_rng(0)


def rle_counts(mask: np.ndarray) -> list[int]:
    """Run lengths in column-major order, starting with a (possibly empty) background run."""
    flat = mask.T.reshape(-1).astype(np.int8)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    return np.diff(np.concatenate([[0], edges])).tolist()


def encode_counts(counts: list[int]) -> str:
    """pycocotools' rleToString, written from its description in maskApi.c."""
    out = []
    for i, x in enumerate(counts):
        if i > 2:
            x -= counts[i - 2]
        more = True
        while more:
            c, x = x & 0x1F, x >> 5
            more = x != -1 if c & 0x10 else x != 0
            out.append(chr((c | 0x20 if more else c) + 48))
    return "".join(out)


def test_compressed_rle_strings_worked_by_hand():
    assert rle_counts_from_string("1231") == [1, 2, 3, 3]
    assert rle_counts_from_string("T3") == [100]  # 100 = 4 + 3*32: two characters, low bits first
    assert rle_counts_from_string("05:M") == [0, 5, 10, 2]  # 'M' = delta -3 to the count two before
    mask = decode_rle({"size": [3, 3], "counts": "1231"})
    np.testing.assert_array_equal(mask, [[0, 0, 1], [1, 0, 1], [1, 0, 1]])  # runs go down the columns
    with pytest.raises(DataError, match="ends inside a count"):
        rle_counts_from_string("T")


@pytest.mark.parametrize("shape", [(5, 7), (64, 48)])
def test_rle_round_trip_compressed_and_uncompressed(shape):
    mask = RNG.random(shape) > 0.7
    mask[:, : shape[1] // 2] = True  # a long run needs several characters
    counts = rle_counts(mask)
    size = list(shape)
    np.testing.assert_array_equal(decode_rle({"size": size, "counts": counts}), mask)
    np.testing.assert_array_equal(decode_rle({"size": size, "counts": encode_counts(counts)}), mask)
    with pytest.raises(DataError, match="cover"):
        decode_rle({"size": [shape[0] + 1, shape[1]], "counts": counts})


def test_polygon_parts_are_ored_at_the_given_size():
    parts = [[2, 2, 20, 2, 20, 15, 2, 15], [10, 5, 30, 5, 30, 25, 10, 25]]  # overlapping rectangles
    mask = decode_segmentation(parts, height=30, width=40)
    expected = np.zeros((30, 40), bool)
    expected[2:16, 2:21] = True  # Pillow fills boundary pixels too
    expected[5:26, 10:31] = True
    assert mask.dtype == np.bool_
    np.testing.assert_array_equal(mask, expected)
    with pytest.raises(DataError, match="polygon with 5 coordinates"):
        decode_segmentation([[1, 2, 3, 4, 5]], 30, 40)


@pytest.mark.parametrize(
    "segmentation,message",
    [(None, "must be polygons or RLE, got NoneType"), ([5], "polygon with int"),
     ({"counts": [4]}, "RLE must be"), ([{"size": [2, 2], "counts": "0"}], "cover 0 pixels")],
)
def test_malformed_segmentations_are_data_errors(segmentation, message):
    with pytest.raises(DataError, match=message):
        decode_segmentation(segmentation, 2, 2)


IMAGES = {7: ("P0007.jpg", 40, 30, (255, 0, 0)), 3: ("P0003.jpg", 24, 24, (0, 0, 255))}  # id: name, w, h, colour
POND = np.zeros((24, 24), bool)
POND[4:12, 6:20] = True


def write_rrsisd(root, refs=None, annotations=None):
    (root / "rrsisd").mkdir(parents=True)
    image_dir = root / "images" / "rrsisd" / "JPEGImages"
    image_dir.mkdir(parents=True)
    for name, w, h, colour in IMAGES.values():
        Image.fromarray(np.full((h, w, 3), colour, np.uint8)).save(image_dir / name, quality=95)
    coco = {
        "images": [{"id": i, "file_name": n, "width": w, "height": h} for i, (n, w, h, _) in IMAGES.items()],
        "annotations": annotations
        or [
            {"id": 11, "image_id": 7, "category_id": 1, "bbox": [2, 2, 28, 23],
             "segmentation": [[2, 2, 20, 2, 20, 15, 2, 15], [10, 5, 30, 5, 30, 25, 10, 25]]},
            {"id": 12, "image_id": 3, "category_id": 2, "bbox": [6, 4, 14, 8],
             "segmentation": {"size": [24, 24], "counts": encode_counts(rle_counts(POND))}},
            {"id": 13, "image_id": 3, "category_id": 2, "bbox": [6, 4, 14, 8],
             "segmentation": {"size": [24, 24], "counts": rle_counts(POND)}},
        ],
        "categories": [{"id": 1, "name": "vehicle"}, {"id": 2, "name": "pond"}],
    }
    (root / "rrsisd" / "instances.json").write_text(json.dumps(coco))

    def sentences(*texts):
        return [{"raw": t, "sent": t.lower(), "tokens": t.lower().split()} for t in texts]

    # ref_id and image_id are swapped on purpose: indexing images by ref_id finds the other image
    refs = refs or [
        {"ref_id": 3, "ann_id": 11, "image_id": 7, "split": "train", "category_id": 1, "file_name": "P0007_3.jpg",
         "sentences": sentences("The red car", "vehicle on the left", "the car parked near the road")},
        {"ref_id": 7, "ann_id": 12, "image_id": 3, "split": "train", "category_id": 2,
         "sentences": sentences("the pond")},
        {"ref_id": 5, "ann_id": 13, "image_id": 3, "split": "val", "category_id": 2,
         "sentences": sentences("blue water")},
    ]
    with open(root / "rrsisd" / "refs(unc).p", "wb") as f:
        pickle.dump(refs, f)
    return root


def test_every_sentence_image_by_image_id_true_size_masks(tmp_path):
    root = str(write_rrsisd(tmp_path))
    ds = RRSISDDataset(root, "train", image_size=32, questions="all")
    assert [(s.stem, s.question, s.concept) for s in ds.samples] == [
        ("P0007", "The red car", "vehicle"),
        ("P0007", "vehicle on the left", "vehicle"),
        ("P0007", "the car parked near the road", "vehicle"),
        ("P0003", "the pond", "pond"),
    ]
    first = RRSISDDataset(root, "train", image_size=32, questions="first")
    assert [s.question for s in first.samples] == ["The red car", "the pond"]

    car = ds[0]
    assert car["box"].tolist() == list(letterbox_geometry(30, 40, 32))  # the 40x30 image, not the square one
    top, left, h, w = car["box"].tolist()
    assert car["image"][0, top + h // 2, left + w // 2] > 0.9 and car["image"][2, top + h // 2, left + w // 2] < 0.1
    expected = decode_segmentation([[2, 2, 20, 2, 20, 15, 2, 15], [10, 5, 30, 5, 30, 25, 10, 25]], 30, 40)
    assert car["mask"].max() == 1 and car["mask"].sum() > 0
    np.testing.assert_array_equal(ds.load(ds.samples[0])[1], expected)

    np.testing.assert_array_equal(ds.load(ds.samples[3])[1], POND)
    val = RRSISDDataset(root, "val", image_size=32)
    np.testing.assert_array_equal(val.load(val.samples[0])[1], POND)  # uncompressed RLE


def test_unknown_split_lists_the_splits(tmp_path):
    with pytest.raises(DataError, match=r"no refs of split 'test' \(its splits: train, val\)"):
        RRSISDDataset(str(write_rrsisd(tmp_path)), "test", image_size=32)


def test_missing_files_are_named(tmp_path):
    root = write_rrsisd(tmp_path)
    (root / "rrsisd" / "instances.json").unlink()
    with pytest.raises(DataError, match=r"RRSIS-D files missing: .*rrsisd/instances\.json"):
        RRSISDDataset(str(root), "train", image_size=32)


def test_ref_whose_image_is_not_in_instances(tmp_path):
    refs = [
        {"ref_id": 1, "ann_id": 11, "image_id": 7, "split": "train", "sentences": [{"raw": "ok"}]},
        {"ref_id": 2, "ann_id": 12, "image_id": 99, "split": "train", "sentences": [{"raw": "lost"}]},
    ]
    root = str(write_rrsisd(tmp_path, refs=refs))
    with pytest.raises(DataError, match=r"ref 2: image_id 99 is not in .*instances\.json"):
        RRSISDDataset(root, "train", image_size=32)
    ds = RRSISDDataset(root, "train", image_size=32, on_bad_sample="skip")
    assert [s.question for s in ds.samples] == ["ok"]
    assert len(ds.skipped) == 1 and ds.skipped[0][0].endswith("refs(unc).p ref 2") and "99" in ds.skipped[0][1]


def test_annotation_of_another_image_and_wrong_size_are_caught(tmp_path):
    refs = [{"ref_id": 1, "ann_id": 12, "image_id": 7, "split": "train", "sentences": [{"raw": "x"}]}]
    with pytest.raises(DataError, match="annotation 12 belongs to image 3, the ref to image 7"):
        RRSISDDataset(str(write_rrsisd(tmp_path / "a", refs=refs)), "train", image_size=32)

    wrong = [{"id": 11, "image_id": 7, "category_id": 1, "segmentation": {"size": [24, 24], "counts": [576]}}]
    refs = [{"ref_id": 1, "ann_id": 11, "image_id": 7, "split": "train", "sentences": [{"raw": "x"}]}]
    ds = RRSISDDataset(str(write_rrsisd(tmp_path / "b", refs=refs, annotations=wrong)), "train", image_size=32)
    with pytest.raises(DataError, match=r"annotation 11: RLE size \[24, 24\] differs from the image size \[30, 40\]"):
        ds[0]


def test_refs_pickle_cannot_run_code(tmp_path):
    refs = [collections.OrderedDict(ref_id=1, ann_id=11, image_id=7, split="train", sentences=[{"raw": "x"}])]
    with pytest.raises(DataError, match=r"refs\(unc\)\.p: unreadable refs pickle .*collections\.OrderedDict"):
        RRSISDDataset(str(write_rrsisd(tmp_path, refs=refs)), "train", image_size=32)
