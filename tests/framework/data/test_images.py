import sys

import cv2
import numpy as np
import pytest
from PIL import Image

from framework.core.errors import ConfigError, DataError
from framework.data.images import read_image, read_mask

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (12, 16, 3), dtype=np.uint8)


def bands_tiff(path, array, **kwargs):
    """Write [H,W,C] (or [C,H,W] with planarconfig='separate') with tifffile, the only multiband writer at hand."""
    tifffile = pytest.importorskip("tifffile")
    tifffile.imwrite(path, array, **{"photometric": "minisblack", "planarconfig": "contig", **kwargs})
    return path


@pytest.mark.parametrize("suffix", [".png", ".tif", ".bmp"])
def test_lossless_8bit_rgb_is_read_exactly(tmp_path, suffix):
    Image.fromarray(RGB).save(tmp_path / f"a{suffix}")
    out = read_image(tmp_path / f"a{suffix}")
    assert out.dtype == np.uint8 and out.shape == (12, 16, 3)
    np.testing.assert_array_equal(out, RGB)


def test_jpeg_and_suffix_does_not_matter(tmp_path):
    flat = np.full((12, 16, 3), (200, 40, 90), np.uint8)
    Image.fromarray(flat).save(tmp_path / "a.png", format="JPEG", quality=100)
    assert np.abs(read_image(tmp_path / "a.png").astype(int) - flat).max() <= 3


def test_greyscale_rgba_and_palette(tmp_path):
    Image.fromarray(RGB[..., 0]).save(tmp_path / "grey.png")
    np.testing.assert_array_equal(read_image(tmp_path / "grey.png"), np.repeat(RGB[..., :1], 3, axis=2))

    rgba = np.dstack([RGB, np.zeros((12, 16), np.uint8)])  # fully transparent: colours must survive
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png"), RGB)

    indices = (np.arange(12 * 16).reshape(12, 16) % 3).astype(np.uint8)
    palette = Image.fromarray(indices, "P")
    palette.putpalette([255, 255, 255, 10, 20, 30, 0, 0, 0])  # index 0 is white: masks must use the indices
    palette.save(tmp_path / "pal.png")
    colours = np.array([[255, 255, 255], [10, 20, 30], [0, 0, 0]], np.uint8)
    np.testing.assert_array_equal(read_image(tmp_path / "pal.png"), colours[indices])
    np.testing.assert_array_equal(read_mask(tmp_path / "pal.png"), indices != 0)


def test_16bit_scale_number_and_auto(tmp_path):
    grey = (np.arange(100 * 100).reshape(100, 100)).astype(np.uint16)  # 0..9999, a ramp
    Image.fromarray(grey).save(tmp_path / "g16.png")
    np.testing.assert_array_equal(
        read_image(tmp_path / "g16.png", scale=40.0)[..., 0], np.clip(np.rint(grey / 40.0), 0, 255)
    )
    auto = read_image(tmp_path / "g16.png")[..., 0]
    low, high = np.percentile(grey, (2, 98))
    assert auto[grey <= low].max() == 0 and auto[grey >= high].min() == 255
    assert abs(int(auto[50, 0]) - 127) <= 1  # the ramp's middle maps to the middle

    rgb16 = np.zeros((10, 10, 3), np.uint16)
    rgb16[..., 0], rgb16[..., 1], rgb16[..., 2] = 1000, 2000, 4000
    rgb16[0, 0] = 0
    cv2.imwrite(str(tmp_path / "rgb16.png"), rgb16[..., ::-1])  # OpenCV writes BGR
    np.testing.assert_array_equal(read_image(tmp_path / "rgb16.png", scale=20)[5, 5], [50, 100, 200])
    # the stretch is shared by the bands, so red stays darker than blue
    stretched = read_image(tmp_path / "rgb16.png")[5, 5]
    assert stretched[0] < stretched[1] < stretched[2] == 255


def test_16bit_rgb_tiff_and_float_tiff(tmp_path):
    rgb16 = (RGB.astype(np.uint16) * 257).astype(np.uint16)
    bands_tiff(tmp_path / "rgb16.tif", rgb16, photometric="rgb")
    np.testing.assert_array_equal(read_image(tmp_path / "rgb16.tif", scale=257), RGB)
    bands_tiff(tmp_path / "f.tif", RGB[..., 0].astype(np.float32) / 255.0)
    np.testing.assert_array_equal(read_image(tmp_path / "f.tif", scale=1 / 255)[..., 1], RGB[..., 0])


@pytest.mark.parametrize("planar", ["contig", "separate"])
def test_13_band_tiff_needs_bands_and_selects_them(tmp_path, planar):
    cube = (np.arange(13)[None, None, :] * 10 + RGB[..., :1] % 7).astype(np.uint16)  # band k holds ~10*(k-1)
    data = cube if planar == "contig" else np.moveaxis(cube, -1, 0)
    path = bands_tiff(tmp_path / "s2.tif", data, planarconfig=planar)
    with pytest.raises(DataError, match=r"s2\.tif: 13 bands.*set data\.bands to three band numbers of 1\.\.13"):
        read_image(path)
    np.testing.assert_array_equal(read_image(path, bands=[4, 3, 2], scale=1), cube[..., [3, 2, 1]])
    with pytest.raises(DataError, match=r"has 13 band\(s\) but data.bands \[1, 2, 14\] asks for band 14"):
        read_image(path, bands=[1, 2, 14])


@pytest.mark.parametrize(
    "bands_in_file,extra,expected",
    [
        (1, {}, "grey"),
        (2, {}, r"2 bands, neither grey nor RGB"),
        (4, {}, r"4 bands, neither grey nor RGB"),
        (4, {"photometric": "rgb", "extrasamples": ["unassalpha"]}, "alpha dropped"),
    ],
)
def test_band_counts(tmp_path, bands_in_file, extra, expected):
    data = np.dstack([RGB, RGB[..., :1]])[..., :bands_in_file].squeeze()
    path = bands_tiff(tmp_path / "b.tif", data, **extra)
    if expected == "grey":
        np.testing.assert_array_equal(read_image(path), np.repeat(RGB[..., :1], 3, axis=2))
    elif expected == "alpha dropped":
        np.testing.assert_array_equal(read_image(path), RGB)
    else:
        with pytest.raises(DataError, match=expected):
            read_image(path)
    np.testing.assert_array_equal(read_image(path, bands=[1, 1, 1]), np.repeat(RGB[..., :1], 3, axis=2))


def test_lzw_tiff_is_read_without_imagecodecs(tmp_path):
    Image.fromarray(RGB).save(tmp_path / "lzw.tif", compression="tiff_lzw")
    np.testing.assert_array_equal(read_image(tmp_path / "lzw.tif"), RGB)


def test_without_tifffile_pillow_reads_plain_tiffs_and_says_what_to_install(tmp_path, monkeypatch):
    cube = np.zeros((8, 8, 5), np.uint8)
    bands_tiff(tmp_path / "five.tif", cube)
    Image.fromarray(RGB).save(tmp_path / "rgb.tif")
    monkeypatch.setitem(sys.modules, "tifffile", None)  # as if it were not installed
    np.testing.assert_array_equal(read_image(tmp_path / "rgb.tif"), RGB)
    with pytest.raises(DataError, match=r"five\.tif: unreadable image .*need the tifffile package"):
        read_image(tmp_path / "five.tif")


def corrupt(path, data):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "kind", ["garbage", "truncated jpeg", "truncated png", "truncated 16-bit png", "truncated tiff"]
)
def test_corrupt_and_truncated_files_name_the_file(tmp_path, kind):
    noise = RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    if kind == "truncated 16-bit png":
        cv2.imwrite(str(tmp_path / "x.png"), noise.astype(np.uint16) * 200)
    else:
        fmt = {"garbage": "PNG", "truncated jpeg": "JPEG", "truncated png": "PNG", "truncated tiff": "TIFF"}[kind]
        Image.fromarray(noise).save(tmp_path / "x.img", format=fmt)
        (tmp_path / "x.img").rename(tmp_path / "x.png")
    whole = (tmp_path / "x.png").read_bytes()
    path = corrupt(tmp_path / "x.png", b"\x00garbage" * 10 if kind == "garbage" else whole[: len(whole) // 2])
    for reader in (read_image, read_mask):
        with pytest.raises(DataError, match=r"x\.png: (unreadable|cannot open)"):
            reader(path)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.png: cannot open"):
        read_image(tmp_path / "nope.png")


def test_masks_of_any_container(tmp_path):
    target = RGB[..., 0] > 128
    Image.fromarray(target.astype(np.uint8) * 255).save(tmp_path / "m.png")
    Image.fromarray(target).save(tmp_path / "m1.tif")  # 1-bit
    Image.fromarray(target.astype(np.uint16) * 3).save(tmp_path / "m16.png")
    rgba = np.zeros((12, 16, 4), np.uint8)
    rgba[..., 3] = 255  # opaque everywhere: only the colour says where the target is
    rgba[target, 1] = 7
    Image.fromarray(rgba, "RGBA").save(tmp_path / "mrgba.png")
    for name in ("m.png", "m1.tif", "m16.png", "mrgba.png"):
        mask = read_mask(tmp_path / name)
        assert mask.dtype == np.bool_, name
        np.testing.assert_array_equal(mask, target, err_msg=name)


def test_miniswhite_bilevel_tiff_mask(tmp_path):
    target = RGB[..., 0] > 128
    bands_tiff(tmp_path / "w.tif", ~target, photometric="miniswhite")  # stored inverted, read as meant
    np.testing.assert_array_equal(read_mask(tmp_path / "w.tif"), target)


@pytest.mark.parametrize(
    "kwargs,message",
    [({"bands": [1, 2]}, "data.bands"), ({"bands": [0, 1, 2]}, "data.bands"), ({"scale": 0}, "data.scale"),
     ({"scale": "max"}, "data.scale")],
)
def test_bad_settings_are_config_errors(tmp_path, kwargs, message):
    Image.fromarray(RGB).save(tmp_path / "a.png")
    with pytest.raises(ConfigError, match=message):
        read_image(tmp_path / "a.png", **kwargs)
