"""Georeferenced rasters with rasterio: GeoTIFF in (bands and scaling as ``data.bands`` / ``data.scale``), mask (or
target id) GeoTIFF and GeoJSON polygons out, in the input's coordinate reference system (CRS) and pixel grid.

Every file is written under a temporary name in its folder and renamed when complete (``atomic_output``), so an
error never leaves a half-written output behind.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from framework.core.errors import DataError
from framework.data.images import TIFF_MAGICS, Raster, raster_to_rgb

MASK_COLOURS = {0: (0, 0, 0, 0), 1: (255, 0, 0, 255)}  # GIS viewers show the answer red over transparent


@contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path``, on error it is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


@dataclass(frozen=True)
class GeoReference:
    """Where a raster lies: ``transform`` (affine, pixel -> CRS coordinates) and ``crs`` (rasterio CRS, or None
    for a GeoTIFF that has a transform but no CRS)."""

    transform: Any
    crs: Any | None

    @property
    def pixel_area_m2(self) -> float | None:
        """Ground area of one pixel in m², when the CRS is projected with a linear unit (None otherwise)."""
        if self.crs is None or not self.crs.is_projected:
            return None
        try:
            _, metres_per_unit = self.crs.linear_units_factor
        except Exception:  # rasterio raises CRSError for a CRS without linear units  # noqa: BLE001
            return None
        return abs(self.transform.determinant) * metres_per_unit**2

    def describe(self) -> str:
        return self.crs.to_string() if self.crs is not None else "no CRS"


def is_tiff(path: Path) -> bool:
    """Whether the file starts like a (Big)TIFF; False for unreadable files (their reader reports why)."""
    try:
        with open(path, "rb") as f:
            return f.read(4) in TIFF_MAGICS
    except OSError:
        return False


def read_geotiff(path: Path, bands: list[int] | None, scale: str | float) -> tuple[np.ndarray, GeoReference | None]:
    """(uint8 [H,W,3] RGB, georeference or None) of a TIFF read with rasterio. A TIFF with neither CRS nor
    transform has no georeference; bands and scaling are ``framework.data.images.read_image``'s."""
    import rasterio
    from rasterio.enums import ColorInterp
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                data = np.moveaxis(src.read(), 0, -1)  # [H,W,C]
                alpha = src.count > 1 and src.colorinterp[-1] == ColorInterp.alpha
                transform, crs = src.transform, src.crs
    except RasterioIOError as exc:
        raise DataError(f"{path}: unreadable raster ({exc})") from None
    pixels = raster_to_rgb(Raster(data, alpha=alpha), path, bands, scale)
    if crs is None and transform.is_identity:
        return pixels, None
    return pixels, GeoReference(transform=transform, crs=crs)


def write_mask_geotiff(
    path: Path, mask: np.ndarray, geo: GeoReference, colours: dict[int, tuple[int, int, int, int]] = MASK_COLOURS
) -> Path:
    """bool [H,W] mask (1 = answer, 0 = not) or uint8 / uint16 [H,W] label map (e.g. target ids) -> single-band
    GeoTIFF of that type on the input's grid and CRS; GIS viewers show each value in ``colours`` (value -> RGBA)."""
    import rasterio

    values = mask.astype(np.uint8) if mask.dtype == bool else mask
    height, width = values.shape
    profile = {
        "driver": "GTiff",
        "height": height,
        "width": width,
        "count": 1,
        "dtype": values.dtype.name,
        "transform": geo.transform,
        "compress": "deflate",
    }
    if geo.crs is not None:
        profile["crs"] = geo.crs
    if height > 512 and width > 512:
        profile |= {"tiled": True, "blockxsize": 512, "blockysize": 512}
    with atomic_output(path) as temporary:
        with rasterio.open(temporary, "w", **profile) as dst:
            dst.write(values, 1)
            dst.write_colormap(1, colours)
    return path


def _feature(geometry: dict, properties: dict[str, Any], area_px: float, pixel_m2: float | None) -> dict:
    """A GeoJSON feature with ``properties`` plus ``area_px`` (and ``area_m2`` in a metric CRS)."""
    area = {"area_px": round(area_px)}
    if pixel_m2 is not None:
        area["area_m2"] = round(area_px * pixel_m2, 3)
    return {"type": "Feature", "geometry": geometry, "properties": {**properties, **area}}


def _collection(features: list[dict], properties: dict[str, Any], geo: GeoReference) -> dict:
    """A FeatureCollection of ``features`` (none: one unlocated ``no_target`` feature with ``properties``), its CRS
    named when it has an EPSG code."""
    if not features:
        features = [{"type": "Feature", "geometry": None, "properties": {**properties, "no_target": True,
                                                                         "area_px": 0}}]
    collection: dict[str, Any] = {"type": "FeatureCollection", "features": features}
    epsg = geo.crs.to_epsg() if geo.crs is not None else None
    if epsg is not None:
        collection["crs"] = {"type": "name", "properties": {"name": f"urn:ogc:def:crs:EPSG::{epsg}"}}
    return collection


def targets_geojson(
    ids: np.ndarray, targets: list[dict[str, Any]], geo: GeoReference, properties: dict[str, Any]
) -> dict:
    """A GeoJSON FeatureCollection with one feature per target of the id map ``ids`` uint8/uint16 [H,W] (0 = none,
    i + 1 = target i, whose own properties are ``targets[i]``): all the target's regions as one valid (Multi)Polygon, with
    ``properties`` updated by the target's own, plus its ``area_px`` (and ``area_m2`` in a metric CRS). A region
    whose pixels touch only at a corner comes out of the tracing as a ring that touches itself, which GIS tools
    reject: it is split at that corner (``make_valid``; the area is unchanged). Coordinates are in the input's CRS,
    named in a ``crs`` member when it has an EPSG code (read by GDAL/QGIS; RFC 7946 readers assume WGS 84). No
    targets: one feature without geometry (RFC 7946's unlocated feature) whose properties say ``no_target``."""
    from rasterio.features import shapes
    from shapely import make_valid, unary_union
    from shapely.geometry import mapping, shape

    pixel_area = abs(geo.transform.determinant)
    polygons: dict[int, list[Any]] = {}
    for geometry, value in shapes(ids, mask=ids > 0, connectivity=8, transform=geo.transform):
        polygon = shape(geometry)
        polygons.setdefault(int(value), []).append(polygon if polygon.is_valid else make_valid(polygon))
    features = []
    for index, own in enumerate(targets):
        union = unary_union(polygons[index + 1])
        features.append(_feature(mapping(union), {**properties, **own}, union.area / pixel_area, geo.pixel_area_m2))
    return _collection(features, properties, geo)


def write_json(path: Path, data: Any) -> Path:
    """``data`` as JSON at ``path``, atomically."""
    with atomic_output(path) as temporary:
        temporary.write_text(json.dumps(data), encoding="utf-8")
    return path
