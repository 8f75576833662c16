"""Section 8: a large georeferenced scene predicted with the demo model through ``segearth predict``'s own path
(``Predictor`` + ``write_predictions`` with its profile): seconds per km² at the scene's resolution, peak memory,
and the whole predict time against the encoder's own seconds over the same tiles (everything but the encoder is
overhead). The scene is a GeoTIFF written here, in row blocks, of smooth random texture at ``RESOLUTION_M``."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin
from rasterio.windows import Window

from benchmarks.common import Section, Target, peak_rss_mib, reset_peak_rss, rss_mib, timed
from benchmarks.questions import scene
from framework.infer.outputs import write_predictions
from framework.infer.predictor import Predictor

RESOLUTION_M = 0.5
QUESTION = "Where could a helicopter land in this scene?"
RATIO_TARGET = 1.5


def write_scene(path: Path, side: int, block: int = 1000) -> Path:
    """A ``side``² RGB GeoTIFF (UTM 40N, ``RESOLUTION_M`` m pixels), written one block of rows at a time."""
    profile = {"driver": "GTiff", "height": side, "width": side, "count": 3, "dtype": "uint8", "tiled": True,
               "blockxsize": 512, "blockysize": 512, "crs": CRS.from_epsg(32640),
               "transform": from_origin(300000, 2780000, RESOLUTION_M, RESOLUTION_M)}
    with rasterio.open(path, "w", **profile) as dst:
        for top in range(0, side, block):
            height = min(block, side - top)
            strip = np.concatenate([scene(block, seed=top + left)[:height] for left in range(0, side, block)], axis=1)
            dst.write(np.moveaxis(strip[:, :side], -1, 0), window=Window(0, top, side, height))
    return path


def run(model, config: dict[str, Any], quick: bool) -> Section:
    """``model`` with its experiment ``config`` (the demo's): one question about a 10,000² scene (2,000² with
    ``quick``)."""
    side = 2_000 if quick else 10_000
    section = Section(
        key="scene",
        title=f"A {side:,} x {side:,} GeoTIFF predicted in tiles (demo model)" + (" (--quick)" if quick else ""),
        columns=["scene", "tiles", "predict s", "encoder s", "predict / encoder", "s per km²", "write s",
                 "peak RSS MiB", "RSS before MiB"],
    )
    with tempfile.TemporaryDirectory() as folder:
        path, written = timed(lambda: write_scene(Path(folder) / "scene.tif", side))
        predictor = Predictor(model, config, answer_tokens=0)  # the masks only
        warm = Path(folder) / "warm.tif"
        write_scene(warm, config["data"]["image_size"] * 2)
        write_predictions(predictor, [(warm, QUESTION)], Path(folder) / "out", profile={})
        before = rss_mib()
        reset_peak_rss()
        write_predictions(predictor, [(path, QUESTION)], Path(folder) / "out", profile={})
        peak = peak_rss_mib()
        profile = json.loads((Path(folder) / "out" / "profile.json").read_text())
    km2 = (side * RESOLUTION_M) ** 2 / 1e6
    encoder = profile["parts"]["encoder"]["seconds"]
    ratio = profile["predict_s"] / encoder
    section.rows.append([f"{side:,}² at {RESOLUTION_M} m ({km2:g} km²)", profile["tiles"],
                         round(profile["predict_s"], 1), round(encoder, 1), round(ratio, 2),
                         round(profile["predict_s"] / km2, 2), round(profile["write_s"], 1), round(peak),
                         round(before)])
    section.targets.append(Target("whole predict time / encoder-only time over the same tiles", ratio, RATIO_TARGET,
                                  "<"))
    others = {name: part["seconds"] for name, part in profile["parts"].items() if name != "encoder"}
    rest = profile["predict_s"] - encoder - sum(others.values())
    section.notes.append(
        "Of the predict seconds: encoder {:.1f}; {}; reading, cropping, letterboxing, resampling and blending the "
        "tiles {:.1f}. The scene GeoTIFF took {:.1f} s to write.".format(
            encoder, ", ".join(f"{name} {seconds:.1f}" for name, seconds in others.items()), rest, written))
    section.data = {"side": side, "resolution_m": RESOLUTION_M, "profile": profile, "peak_rss_mib": peak,
                    "rss_before_mib": before}
    return section
