"""Reading images and masks of any common kind into plain arrays.

``read_image`` → uint8 [H,W,3] RGB; ``read_mask`` → bool [H,W] (non-zero = target). Containers are told apart by
their first bytes, not their suffix:

- TIFF / GeoTIFF (any band count, 8/16/32-bit, float, planar or interleaved, tiled): ``tifffile`` when installed;
  otherwise, and for compressions tifffile cannot decode without ``imagecodecs`` (LZW, JPEG), Pillow, which
  handles up to four 8-bit bands or one 16-bit band.
- 16-bit PNG: OpenCV (Pillow silently drops 16-bit colour PNGs to 8 bits).
- everything else (JPEG, 8-bit PNG, palette, greyscale, RGBA, BMP, ...): Pillow.

Bands are numbered from 1 as in GDAL. Without ``bands``, one band is replicated to grey RGB, three are RGB, an
alpha band the file marks as such is dropped, and any other count is a DataError asking for ``data.bands``.
Data deeper than 8 bits is brought to 8 bits by ``scale``; 8-bit data is used as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from framework.core.errors import ConfigError, DataError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders
AUTO_PERCENTILES = (2.0, 98.0)
AUTO_STATS_PIXELS = 1_000_000  # the percentiles of a larger image are taken on a regular subsample
_PIL_AS_IS = {"1", "L", "LA", "P", "RGB", "RGBA", "I;16", "I;16L", "I;16B", "I;16N", "I", "F"}


@dataclass(frozen=True)
class Raster:
    """A decoded file: ``array`` [H,W] or [H,W,C] in the file's own dtype; ``alpha`` = the last band is alpha;
    ``palette`` [N,3] uint8 when ``array`` holds palette indices."""

    array: np.ndarray
    alpha: bool = False
    palette: np.ndarray | None = None


def check_bands(bands: list[int] | None) -> None:
    """ConfigError unless ``bands`` is None or three band numbers >= 1."""
    if bands is None:
        return
    if (
        not isinstance(bands, (list, tuple))
        or len(bands) != 3
        or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in bands)
    ):
        raise ConfigError(f"data.bands: expected three band numbers >= 1 (red, green, blue; 1-based), got {bands!r}")


def check_scale(scale: str | float) -> None:
    """ConfigError unless ``scale`` is 'auto' or a positive number."""
    if scale == "auto":
        return
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
        raise ConfigError(
            f"data.scale: expected 'auto' (2nd-98th percentile stretch per image) or a positive number to divide "
            f"deeper-than-8-bit values by (e.g. 257 for 16-bit), got {scale!r}"
        )


def read_image(path: str | Path, bands: list[int] | None = None, scale: str | float = "auto") -> np.ndarray:
    """The image at ``path`` as uint8 [H,W,3] RGB.

    ``bands``: three 1-based band numbers used as red, green, blue (a band may repeat); needed for files that are
    neither grey nor RGB(A). ``scale`` for data deeper than 8 bits: ``'auto'`` stretches the 2nd-98th percentile
    of the (selected) bands, taken together so colours keep their balance, to 0-255; a number divides by it.
    """
    check_bands(bands)
    check_scale(scale)
    path = Path(path)
    return raster_to_rgb(decode(path), path, bands, scale)


def raster_to_rgb(raster: Raster, path: Path, bands: list[int] | None, scale: str | float) -> np.ndarray:
    """A decoded file -> uint8 [H,W,3] RGB by ``bands`` and ``scale`` as in ``read_image`` (``path`` names the
    file in messages); shared with readers that decode with other libraries (``framework.data.geo``: rasterio)."""
    data, alpha = raster.array, raster.alpha
    if raster.palette is not None:
        data, alpha = np.take(raster.palette, data, axis=0, mode="clip"), False
    if data.ndim == 2:
        data = data[:, :, None]
    count = data.shape[2]
    if bands is not None:
        outside = [b for b in bands if b > count]
        if outside:
            raise DataError(
                f"{path}: has {count} band(s) but data.bands {list(bands)} asks for band {outside[0]}; "
                f"use band numbers in 1..{count}"
            )
        data = data[:, :, [b - 1 for b in bands]]
    else:
        if alpha:
            data, count = data[:, :, :-1], count - 1
        if count == 1:
            data = np.repeat(data, 3, axis=2)
        elif count != 3:
            raise DataError(
                f"{path}: {count} bands, neither grey nor RGB: set data.bands to three band numbers of 1..{count} "
                f"(1-based as in GDAL, used as red, green, blue; a band may repeat)"
            )
    return np.ascontiguousarray(to_uint8(data, scale))


def read_mask(path: str | Path) -> np.ndarray:
    """The mask at ``path`` as bool [H,W]: True where any band is non-zero (palette files: where the index is
    non-zero; an alpha band is ignored)."""
    path = Path(path)
    raster = decode(path)
    data = raster.array[..., :-1] if raster.alpha else raster.array
    if data.dtype.kind == "f":
        data = np.nan_to_num(data)  # NaN is no-data, not target
    mask = data != 0
    return mask.any(axis=2) if mask.ndim == 3 else mask


def to_uint8(data: np.ndarray, scale: str | float) -> np.ndarray:
    """[H,W,C] of any dtype → uint8; uint8 passes through, bool becomes 0/255 (see ``read_image`` for scale)."""
    if data.dtype == np.uint8:
        return data
    if data.dtype == np.bool_:
        return data.astype(np.uint8) * 255
    values = data.astype(np.float32)
    if scale == "auto":
        step = max(1, int(np.sqrt(values.shape[0] * values.shape[1] / AUTO_STATS_PIXELS)))
        sample = values[::step, ::step]
        finite = sample[np.isfinite(sample)]
        low, high = np.percentile(finite, AUTO_PERCENTILES) if finite.size else (0.0, 0.0)
        values = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
    else:
        values = values / float(scale)
    return np.clip(np.nan_to_num(np.rint(values)), 0, 255).astype(np.uint8)


def decode(path: Path) -> Raster:
    """The file's pixels as stored (see the module docstring for which library reads what)."""
    try:
        with open(path, "rb") as f:
            head = f.read(26)
    except OSError as exc:
        raise DataError(f"{path}: cannot open ({exc.strerror or exc})") from None
    if head[:4] in TIFF_MAGICS:
        return _decode_tiff(path)
    if head[:8] == PNG_SIGNATURE and head[12:16] == b"IHDR" and head[24] == 16:
        return _decode_opencv(path)
    return _decode_pil(path)


def _decode_tiff(path: Path) -> Raster:
    try:
        import tifffile
    except ImportError:
        return _decode_pil(path, hint="; multiband and 16-bit colour TIFFs need the tifffile package")
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            if page.compression not in tifffile.TIFF.DECOMPRESSORS:
                # Pillow's libtiff decodes LZW and JPEG, which tifffile leaves to imagecodecs.
                return _decode_pil(path, hint=f"; {page.compression.name}-compressed: install imagecodecs")
            series = tif.series[0]
            data, axes = series.asarray(), series.axes
            photometric, extrasamples, colormap = page.photometric, page.extrasamples, page.colormap
    except (ValueError, OSError, EOFError, IndexError) as exc:  # tifffile's own errors are ValueErrors
        raise DataError(f"{path}: unreadable TIFF ({exc})") from None
    keep = [i for i, (axis, n) in enumerate(zip(axes, data.shape)) if axis in "YX" or n > 1]
    data, axes = data.reshape([data.shape[i] for i in keep]), "".join(axes[i] for i in keep)
    if len(axes) == 3 and axes[1:] == "YX":  # bands stored plane by plane
        data, axes = np.moveaxis(data, 0, -1), axes[1:] + axes[0]
    if axes not in ("YX", "YXS", "YXC", "YXI", "YXQ"):
        raise DataError(f"{path}: unsupported TIFF layout (axes {axes}, shape {data.shape}); expected one 2-D image")
    if photometric == tifffile.PHOTOMETRIC.MINISWHITE and data.dtype.kind in "bu":
        data = np.invert(data)
    if photometric == tifffile.PHOTOMETRIC.PALETTE and colormap is not None:
        return Raster(data, palette=(np.asarray(colormap).T >> 8).astype(np.uint8))
    alpha = data.ndim == 3 and bool(extrasamples) and int(extrasamples[-1]) in (1, 2)  # associated/unassociated
    return Raster(data, alpha=alpha)


def _decode_opencv(path: Path) -> Raster:
    import cv2

    data = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if data is None:
        raise DataError(f"{path}: unreadable 16-bit PNG (corrupt or truncated)")
    if data.ndim == 3:  # OpenCV orders colour bands BGR(A)
        data = data[:, :, [2, 1, 0, 3][: data.shape[2]]]
    return Raster(data, alpha=data.ndim == 3 and data.shape[2] == 4)


def _decode_pil(path: Path, hint: str = "") -> Raster:
    try:
        with Image.open(path) as im:
            im.load()
            if im.format == "TIFF":
                bits = im.tag_v2.get(258, (8,))
                if im.tag_v2.get(277, 1) > 1 and max(bits) > 8:
                    raise DataError(f"{path}: {max(bits)}-bit colour TIFF would be cut to 8 bits by Pillow{hint}")
            if im.mode == "P":
                palette = np.asarray(im.getpalette("RGB") or [0, 0, 0], dtype=np.uint8).reshape(-1, 3)
                return Raster(np.asarray(im), palette=palette)
            if im.mode not in _PIL_AS_IS:  # CMYK, YCbCr, PA, RGBa, La, ...
                im = im.convert("RGBA" if "A" in im.mode or "a" in im.mode else "RGB")
            return Raster(np.asarray(im), alpha=im.mode in ("LA", "RGBA"))
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: unreadable image ({exc}){hint}") from None
