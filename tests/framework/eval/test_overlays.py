"""Prediction overlays: the image at its own size plus a caption band, ground truth outlined in green, the
prediction filled translucent red and outlined (an answer's targets each in its palette colour), one PNG per sample
named by stem and id."""

import numpy as np
from PIL import Image

from framework.data.datamodule import build_dataset
from framework.data.synth import write_synthetic_dataset
from framework.eval.overlays import (
    GT_COLOUR,
    PALETTE,
    PRED_COLOUR,
    PRED_FILL_ALPHA,
    outline,
    palette_rgb,
    render_overlay,
    write_overlays,
)


def rectangle(shape, top, left, bottom, right):
    mask = np.zeros(shape, dtype=bool)
    mask[top:bottom, left:right] = True
    return mask


def test_outline_is_the_border_and_closes_at_the_image_edge():
    mask = rectangle((6, 8), 1, 2, 5, 8)  # touches the right edge
    ring = outline(mask)
    interior = rectangle((6, 8), 2, 3, 4, 7)
    assert np.array_equal(ring, mask & ~interior)
    assert outline(np.ones((5, 5), dtype=bool)).sum() == 16  # the whole image: its 1-px frame
    assert not outline(np.zeros((5, 5), dtype=bool)).any()


def test_colours_size_and_caption_band():
    height, width = 40, 70
    image = np.full((height, width, 3), 100, dtype=np.uint8)
    target = rectangle((height, width), 5, 5, 25, 30)
    prediction = rectangle((height, width), 10, 20, 35, 60)
    picture = render_overlay(image, target, prediction, "Where could a seaplane land safely on this lake?")
    assert picture.mode == "RGB" and picture.width == width and picture.height > height
    pixels = np.asarray(picture)
    assert (pixels[:height][outline(target)] == GT_COLOUR).all()
    pred_only_ring = outline(prediction) & ~outline(target)
    assert (pixels[:height][pred_only_ring] == PRED_COLOUR).all()
    fill = rectangle((height, width), 28, 30, 33, 55)  # inside the prediction only
    expected = np.round((1 - PRED_FILL_ALPHA) * 100 + PRED_FILL_ALPHA * np.array(PRED_COLOUR))
    assert (pixels[:height][fill] == expected).all()
    assert (pixels[:height][~target & ~prediction] == 100).all()  # the rest of the image untouched
    assert pixels[height:].any()  # the caption is drawn


def test_targets_are_each_filled_and_outlined_in_their_own_palette_colour():
    """An id map (0 = none, k = target k): target k in ``palette_rgb(k - 1)``, the palette cycling past its end."""
    height, width = 40, 70
    image = np.full((height, width, 3), 100, dtype=np.uint8)
    first, second = rectangle((height, width), 5, 5, 25, 30), rectangle((height, width), 10, 40, 35, 65)
    ids = np.zeros((height, width), np.uint16)
    ids[first], ids[second] = 1, len(PALETTE) + 1  # the second in the palette's first colour again
    ids[30:35, 5:10] = 2
    pixels = np.asarray(render_overlay(image, None, ids, "Where are the boats?  (3 targets)"))[:height]
    for k in (1, 2, len(PALETTE) + 1):
        region = ids == k
        assert (pixels[outline(region)] == palette_rgb(k - 1)).all()
        inside = region & ~outline(region)
        expected = np.round((1 - PRED_FILL_ALPHA) * 100 + PRED_FILL_ALPHA * np.array(palette_rgb(k - 1)))
        assert (pixels[inside] == expected).all()
    assert palette_rgb(len(PALETTE)) == palette_rgb(0) != palette_rgb(1)
    assert (pixels[ids == 0] == 100).all()
    assert len({tuple(p) for p in pixels.reshape(-1, 3)}) > 3  # two colours, their fills and the untouched image


def test_a_long_caption_wraps_onto_more_lines():
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    mask = np.zeros((64, 64), dtype=bool)
    one_line = render_overlay(image, mask, mask, "Where?")
    wrapped = render_overlay(image, mask, mask, "Which part of the image could supply drinking water for a town?")
    assert wrapped.width == one_line.width == 64 and wrapped.height > one_line.height


def test_write_overlays_one_png_per_sample(tmp_path):
    write_synthetic_dataset(tmp_path / "data", n=6, seed=4, image_size=64)
    dataset = build_dataset(
        {"root": str(tmp_path / "data"), "format": "earthreason", "image_size": 32, "bands": None, "scale": "auto",
         "on_bad_sample": "error"},
        "test",
        "first",
    )
    predictions = {i: dataset.load(dataset.samples[i])[1] for i in (1, 0)}  # perfect predictions
    paths = write_overlays(dataset, predictions, tmp_path / "overlays")
    assert [p.name for p in paths] == [f"{dataset.samples[i].stem}_{i}.png" for i in (0, 1)]
    for index, path in zip((0, 1), paths):
        picture = np.asarray(Image.open(path))
        image, target = dataset.load(dataset.samples[index])
        assert picture.shape[1] == image.shape[1] and picture.shape[0] > image.shape[0]
        assert (picture[: image.shape[0]][outline(target)] == GT_COLOUR).all()
