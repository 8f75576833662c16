"""Procedural top-down aerial scenes written in the EarthReason layout: the project's embedded demo data.

Layout (exactly what the EarthReason readers expect, plus two extra JSON keys they ignore)::

    out/{train,val,test}/images/<stem>.jpg   RGB JPEG, quality 95
    out/{train,val,test}/labels/<stem>.png   8-bit grayscale, 255 = target, 0 elsewhere
    out/{train,val,test}/QAs/<stem>.json     {"questions": [3-5 phrasings of one query],
                                              "answer": [one sentence] or [] when nothing is the target,
                                              "concept": concept id, "scene": scene index}

``<stem>`` is ``<scene:05d>_<k>``: one scene image is written once per sample k, each time with another
question and mask. Scenes are split 70/15/15 by scene index into train/val/test, so no scene is shared
between splits, and every split draws its questions from its own phrasing pool (``PHRASINGS``), so
val/test questions are never seen in training.

A scene is bare land with texture, optionally water (one or two lakes, a meandering river or a sea
along one edge), an airport runway, roads, car parks, buildings with cast shadows, crop fields with row
stripes and forest patches. Class-level concepts are the union of all visible instances of one class:
``water``, ``vegetation`` (forest patches), ``field``, ``road`` (bridges included, runway excluded),
``building`` (roofs, not their shadows), ``runway`` and ``parking`` (the lot with its cars).

Relational concepts, defined on the visible instance masks and asked only when well-defined:

- ``largest_field``: the field with the most visible pixels; asked when the scene has at least two fields
  and the largest has at least ``LARGEST_FIELD_RATIO`` times the pixels of the second largest.
- ``building_nearest_water``: the building whose closest pixel is nearest (Euclidean, in pixels) to any
  water pixel; asked when there is water and at least two buildings and the second-nearest building is at
  least ``NEAREST_WATER_MARGIN`` x image size farther away than the nearest.
- ``field_north_of_road``: the fields above (north of, image up = north) the main road, the road that
  crosses the image from the left edge to the right edge; a field is above it when its centroid row is
  smaller than the road's centreline row in the centroid's column. Asked when there are fields on both
  sides of the main road.

About ``NO_TARGET_SHARE`` of samples ask for a class absent from the scene (empty answer, all-zero
label) and about ``RELATIONAL_SHARE`` ask a relational concept; the k samples of one scene ask k
different concepts. Everything is drawn from ``np.random.default_rng([seed, scene_index])``, so a scene
depends only on (seed, scene index, image size) and equal arguments write byte-identical files.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from framework.data.earthreason import prepare_split_folders
from framework.errors import DataError

SPLITS = ("train", "val", "test")
CLASS_CONCEPTS = ("water", "vegetation", "field", "road", "building", "runway", "parking")
RELATIONAL_CONCEPTS = ("largest_field", "building_nearest_water", "field_north_of_road")
CONCEPTS = CLASS_CONCEPTS + RELATIONAL_CONCEPTS
NO_TARGET_SHARE = 0.10
RELATIONAL_SHARE = 0.25
LARGEST_FIELD_RATIO = 1.25
NEAREST_WATER_MARGIN = 0.05
MIN_IMAGE_SIZE = 64

# One table for every question the generator can ask: concept -> split -> phrasings. The pools of one
# concept are disjoint across splits (a test checks it), so val/test measure generalisation to new wording.
PHRASINGS: dict[str, dict[str, tuple[str, ...]]] = {
    "water": {
        "train": (
            "Where could a seaplane land safely?",
            "Which area could a boat sail across?",
            "Where would you go for a swim?",
            "Which part of the scene holds water?",
            "Where could a fisherman cast a line from a boat?",
            "Which region could a kayak paddle across?",
            "Where is the water in this image?",
            "Which area is covered by open water?",
            "Where could ducks float and swim?",
            "Which part of the image could supply drinking water for a town?",
            "Where would a ship be able to travel?",
            "Which region is flooded with water all year round?",
        ),
        "val": (
            "Where could a rowing boat be launched and paddled?",
            "Which area would a swimmer head for on a hot day?",
            "Where is the body of water in this scene?",
            "Which zone could a water-skier use?",
        ),
        "test": (
            "Where might a sailing boat travel in this picture?",
            "Which part of the scene is covered with water?",
            "Where could someone go fishing from a boat?",
            "Which region would a seaplane touch down on?",
        ),
    },
    "vegetation": {
        "train": (
            "Which area gives the most shade from trees?",
            "Where is the forest?",
            "Which part of the image is covered by woodland?",
            "Where could you collect firewood from trees?",
            "Where do the trees grow densely?",
            "Which region would a hiker cross under a canopy of leaves?",
            "Where would birds nest in the tree crowns?",
            "Which areas are wooded?",
            "Where could a lumberjack cut timber?",
            "Which zones are covered by natural tree vegetation?",
            "Where is the dense green canopy?",
            "Which part of the land is overgrown with trees?",
        ),
        "val": (
            "Where could deer hide among the trees?",
            "Which patches of the scene are forested?",
            "Where would a walk in the woods take place?",
            "Which area has a thick cover of tree crowns?",
        ),
        "test": (
            "Where can one find shelter beneath trees?",
            "Which parts of the picture are covered with forest?",
            "Where could timber be harvested?",
            "Which region shows a dense canopy of trees?",
        ),
    },
    "field": {
        "train": (
            "Where are crops grown?",
            "Which areas are farmland?",
            "Where would a tractor plough the soil?",
            "Which plots are used for agriculture?",
            "Where could a farmer harvest wheat?",
            "Which parts of the land are cultivated?",
            "Where are the crop fields?",
            "Which areas show rows of planted crops?",
            "Where does food for the village grow?",
            "Which rectangles of land are farmed?",
            "Where would a combine harvester work?",
            "Which parcels of land are used for growing vegetables?",
        ),
        "val": (
            "Where could a farmer sow seeds?",
            "Which regions are agricultural fields?",
            "Where is the cropland in this image?",
            "Which land is planted in rows?",
        ),
        "test": (
            "Where is grain cultivated in this scene?",
            "Which parts of the image are used for farming?",
            "Where might a tractor be working the soil?",
            "Which plots of land grow crops?",
        ),
    },
    "road": {
        "train": (
            "Which surfaces do cars drive along?",
            "Where are the roads?",
            "Which paths connect the places in this scene for vehicles?",
            "Where could a bus travel?",
            "Which strips of asphalt carry traffic?",
            "Where would a cyclist ride between towns?",
            "Which routes could a delivery truck take?",
            "Where is the street network?",
            "Which lanes are used by traffic?",
            "Where could a taxi drive?",
            "Which paved routes have lane markings?",
            "Where do vehicles travel through the area?",
        ),
        "val": (
            "Which ways could a car follow through the scene?",
            "Where is the highway?",
            "Which paved lanes carry cars and lorries?",
            "Where would an ambulance drive?",
        ),
        "test": (
            "Which routes do vehicles use to get around?",
            "Where could a motorbike be ridden?",
            "Which parts of the image are roads for traffic?",
            "Where do trucks drive in this scene?",
        ),
    },
    "building": {
        "train": (
            "Where do people live or work here?",
            "Which structures have roofs?",
            "Where are the houses?",
            "Which objects are buildings?",
            "Where could a family find shelter from the rain indoors?",
            "Which constructions could hold offices?",
            "Where would you find homes in this scene?",
            "Which parts of the image are built structures?",
            "Where could goods be stored indoors?",
            "Which rooftops are visible?",
            "Where are the buildings?",
            "Where could someone sleep under a roof?",
        ),
        "val": (
            "Where might people have their homes?",
            "Which buildings can be seen from above?",
            "Where are the dwellings in this image?",
            "Which rooftops could hold solar panels?",
        ),
        "test": (
            "Where do the residents of this area live?",
            "Which roofed structures are in the scene?",
            "Where could workers have their offices?",
            "Which parts of the picture are houses or buildings?",
        ),
    },
    "runway": {
        "train": (
            "Where could an aircraft take off?",
            "Where do planes land?",
            "Which strip is used by airplanes?",
            "Where is the airport runway?",
            "Which long paved strip serves jets?",
            "Where could a pilot touch down?",
            "Which surface is built for aircraft to accelerate on?",
            "Where would an airliner land?",
            "Which part of the image is an airstrip?",
            "Where could a cargo plane depart from?",
            "Which long strip has threshold markings for aircraft?",
            "Where would a small plane make its landing?",
        ),
        "val": (
            "Where do airplanes take off and land?",
            "Which strip would a jet use for departure?",
            "Where is the landing strip?",
            "Which runway could a pilot use?",
        ),
        "test": (
            "Where might a plane take off from?",
            "Which long strip is meant for aircraft landings?",
            "Where is the airstrip in this scene?",
            "Which surface could an airliner land on?",
        ),
    },
    "parking": {
        "train": (
            "Where can drivers leave their cars?",
            "Where is the car park?",
            "Which area is a parking lot?",
            "Where could a visitor park a vehicle?",
            "Which paved areas are full of parked cars?",
            "Where would you leave a car while shopping?",
            "Which area has marked spaces for vehicles?",
            "Where are the parking spaces?",
            "Which lot holds rows of cars?",
            "Where do commuters park?",
            "Which area stores vehicles that are not moving?",
            "Where could you find a free parking space?",
        ),
        "val": (
            "Where could someone park their car?",
            "Which area is used for parking vehicles?",
            "Where are cars left standing in rows?",
            "Which lot provides parking spaces?",
        ),
        "test": (
            "Where can a car be parked in this scene?",
            "Which area is the parking lot?",
            "Where do people leave their vehicles?",
            "Which place holds rows of parked cars?",
        ),
    },
    "largest_field": {
        "train": (
            "Which is the biggest field?",
            "Where is the largest plot of farmland?",
            "Which cultivated plot covers the most area?",
            "Where is the single largest crop field?",
            "Which farm field is the largest one?",
            "Where would the biggest harvest come from?",
            "Which agricultural parcel is the largest?",
            "Where is the widest area of cropland in one piece?",
            "Which field would take a tractor longest to plough?",
            "Where is the most extensive single field?",
            "Which one crop field is larger than all others?",
            "Where is the largest field of crops?",
        ),
        "val": (
            "Which field has the greatest area?",
            "Where is the biggest single plot of crops?",
            "Which farmland parcel is the largest?",
            "Where is the largest cultivated field?",
        ),
        "test": (
            "Which crop field is the biggest in the image?",
            "Where is the field with the largest area?",
            "Which single plot of farmland is the most extensive?",
            "Where would the largest field be harvested?",
        ),
    },
    "building_nearest_water": {
        "train": (
            "Which building is closest to the water?",
            "Where is the house nearest to the water's edge?",
            "Which building would flood first if the water rose?",
            "Which structure stands nearest the shore?",
            "Where is the building with the shortest walk to the water?",
            "Which house is right next to the water?",
            "Which building is the nearest one to the lake, river or sea?",
            "Where could a boat owner live closest to the water?",
            "Which roofed structure is nearest to the waterfront?",
            "Which building lies closest to the shoreline?",
            "Where is the building that is nearest to the water body?",
            "Which one building is nearest to open water?",
        ),
        "val": (
            "Which building sits closest to the water's edge?",
            "Where is the house that is nearest to the shore?",
            "Which structure is the closest to the water?",
            "Which building is most at risk if the water floods?",
        ),
        "test": (
            "Which building is located nearest to the water?",
            "Where is the structure closest to the shoreline?",
            "Which house would get wet first in a flood?",
            "Which building has the water closest to it?",
        ),
    },
    "field_north_of_road": {
        "train": (
            "Which fields lie north of the main road?",
            "Where are the crop fields on the northern side of the road?",
            "Which farmland is above the road in this image?",
            "Which fields are between the road and the top of the image?",
            "Where are the fields north of the highway?",
            "Which crops grow on the north side of the main road?",
            "Which agricultural fields are located to the north of the road?",
            "Which fields would you reach by turning north off the main road?",
            "Where is the farmland above the main road?",
            "Which cultivated plots lie on the upper side of the road?",
            "Which fields are on the road's northern side?",
            "Where are the fields that lie north of the road?",
        ),
        "val": (
            "Which fields are located north of the road?",
            "Where is the cropland on the north side of the road?",
            "Which farm plots lie above the main road?",
            "Which fields sit to the north of the highway?",
        ),
        "test": (
            "Which crop fields are north of the main road?",
            "Where are the farm fields above the road?",
            "Which farmland lies on the northern side of the road?",
            "Which fields can be found north of the highway?",
        ),
    },
}

# Per-sample probabilities of asking a no-target / relational question; higher than the target shares
# because a scene cannot always offer one (then a class-level concept is asked instead).
_ASK_NO_TARGET_P = 0.10
_ASK_RELATIONAL_P = 0.45

_BACKGROUNDS = (
    ((196, 176, 136), (168, 142, 104)),
    ((184, 160, 120), (150, 124, 90)),
    ((204, 190, 156), (178, 162, 126)),
    ((172, 140, 104), (142, 112, 80)),
    ((182, 172, 142), (150, 144, 112)),
)
_WATER_DEEP = ((28, 58, 88), (32, 72, 96), (36, 76, 74), (24, 48, 72), (44, 84, 106))
_FIELD_COLOURS = (
    (92, 134, 52), (128, 158, 66), (196, 176, 92), (146, 108, 68), (112, 128, 58), (170, 150, 70), (78, 112, 58),
)
_FOREST_COLOURS = ((38, 68, 36), (46, 78, 42), (34, 60, 40), (50, 72, 34))
_ROOF_COLOURS = (
    (168, 78, 58), (150, 150, 152), (214, 210, 202), (86, 90, 100), (72, 98, 140), (190, 120, 80), (120, 70, 60),
)
_CAR_COLOURS = ((236, 236, 236), (30, 30, 35), (178, 32, 30), (40, 62, 150), (172, 172, 178), (110, 110, 116))
_REGION_NAMES = (
    ("upper left", "top", "upper right"),
    ("left", "centre", "right"),
    ("lower left", "bottom", "lower right"),
)
_REGION_PHRASES = (
    ("in the upper left", "at the top", "in the upper right"),
    ("on the left side", "in the centre", "on the right side"),
    ("in the lower left", "at the bottom", "in the lower right"),
)
_COUNT_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


@dataclass
class _Instance:
    """One object of a scene: ``mask`` is (S, S) bool, planned first, then reduced to its visible pixels."""

    mask: np.ndarray
    kind: str
    params: dict = field(default_factory=dict)


@dataclass
class _Target:
    """What one sample asks for: ``mask`` (S, S) bool, ``answer`` None when the concept is absent."""

    concept: str
    mask: np.ndarray
    answer: str | None


# ----------------------------------------------------------------------------------------------- geometry


def _flat(points: np.ndarray) -> list[float]:
    return np.asarray(points, dtype=np.float64).ravel().tolist()


def _draw_mask(size: int, draw) -> np.ndarray:
    """Rasterise whatever ``draw(ImageDraw)`` paints with fill 255 into an (S, S) bool mask."""
    canvas = Image.new("L", (size, size), 0)
    draw(ImageDraw.Draw(canvas))
    return np.asarray(canvas) > 0


def _polygon_mask(size: int, polygon: np.ndarray) -> np.ndarray:
    return _draw_mask(size, lambda d: d.polygon(_flat(polygon), fill=255))


def _band_mask(size: int, points: np.ndarray, width: float) -> np.ndarray:
    """A band of ``width`` around a smooth polyline (k, 2), rasterised as one polygon (curvature >> width)."""
    tangent = np.gradient(points, axis=0)
    normal = np.stack([-tangent[:, 1], tangent[:, 0]], axis=-1) / np.hypot(tangent[:, :1], tangent[:, 1:])
    offset = normal * (width / 2)
    return _polygon_mask(size, np.concatenate([points + offset, (points - offset)[::-1]]))


def _rect(centre: np.ndarray, length: float, depth: float, angle: float) -> np.ndarray:
    """Corners (4, 2) of a rectangle with ``length`` along ``angle`` and ``depth`` across it."""
    local = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64) * [length / 2, depth / 2]
    return _to_world(local, centre, angle)


def _to_world(local: np.ndarray, centre: np.ndarray, angle: float) -> np.ndarray:
    """Map local (u along ``angle``, v across) coordinates (..., 2) to image (x, y)."""
    c, s = math.cos(angle), math.sin(angle)
    u, v = local[..., 0], local[..., 1]
    return np.stack([centre[0] + u * c - v * s, centre[1] + u * s + v * c], axis=-1)


def _to_local(xs: np.ndarray, ys: np.ndarray, centre: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    c, s = math.cos(angle), math.sin(angle)
    dx, dy = xs - centre[0], ys - centre[1]
    return dx * c + dy * s, -dx * s + dy * c


def _blob_shape(rng: np.random.Generator, roughness: float, points: int = 48) -> np.ndarray:
    """Relative radius (points,) of an irregular closed outline: a circle perturbed by low harmonics."""
    theta = np.linspace(0, 2 * np.pi, points, endpoint=False)
    radius = np.ones(points)
    for k in range(2, 7):
        radius += roughness / k * rng.uniform(0.3, 1.0) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return np.maximum(radius, 0.3)


def _blob_polygon(centre: np.ndarray, radius: float, shape: np.ndarray, pad: float = 0.0) -> np.ndarray:
    theta = np.linspace(0, 2 * np.pi, len(shape), endpoint=False)
    r = radius * shape + pad
    return np.stack([centre[0] + r * np.cos(theta), centre[1] + r * np.sin(theta)], axis=-1)


def _bezier(control: np.ndarray, samples: int) -> np.ndarray:
    """Points (samples, 2) on the Bezier curve with control points (m, 2)."""
    t = np.linspace(0.0, 1.0, samples)[:, None]
    m = len(control) - 1
    return sum(math.comb(m, i) * t**i * (1 - t) ** (m - i) * control[i] for i in range(m + 1))


def _resample(points: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray]:
    """Points spaced ``step`` apart along a polyline, with their unit tangents; both (k, 2)."""
    seg = np.diff(points, axis=0)
    arc = np.concatenate([[0.0], np.cumsum(np.hypot(seg[:, 0], seg[:, 1]))])
    s = np.arange(0.0, arc[-1], step)
    resampled = np.stack([np.interp(s, arc, points[:, 0]), np.interp(s, arc, points[:, 1])], axis=-1)
    tangent = np.gradient(resampled, axis=0)
    return resampled, tangent / np.maximum(np.hypot(tangent[:, :1], tangent[:, 1:]), 1e-9)


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Square dilation by ``radius`` pixels."""
    out = mask.copy()
    for axis in (0, 1):
        grown = out.copy()
        for shift in range(1, radius + 1):
            if axis == 0:
                grown[shift:] |= out[:-shift]
                grown[:-shift] |= out[shift:]
            else:
                grown[:, shift:] |= out[:, :-shift]
                grown[:, :-shift] |= out[:, shift:]
        out = grown
    return out


def _boundary_points(mask: np.ndarray) -> np.ndarray:
    """(k, 2) x, y of mask pixels with a non-mask 8-neighbour (outside the image counts as non-mask)."""
    ys, xs = np.nonzero(mask)
    if not len(ys):
        return np.zeros((0, 2), dtype=np.float32)
    y0, x0 = ys.min(), xs.min()
    crop = np.pad(mask[y0 : ys.max() + 1, x0 : xs.max() + 1], 1)
    edge = crop & _dilate(~crop, 1)
    ys, xs = np.nonzero(edge[1:-1, 1:-1])
    return np.stack([xs + x0, ys + y0], axis=-1).astype(np.float32)


def _noise(rng: np.random.Generator, size: int, cells: int, octaves: int = 1) -> np.ndarray:
    """Smooth value noise (S, S) float32 with unit-ish amplitude; ``cells`` is the coarsest grid size."""
    out = np.zeros((size, size), dtype=np.float32)
    total = 0.0
    for octave in range(octaves):
        n = min(size, cells * 2**octave)
        grid = Image.fromarray(rng.standard_normal((n, n), dtype=np.float32))
        weight = 0.5**octave
        out += weight * np.asarray(grid.resize((size, size), Image.Resampling.BICUBIC))
        total += weight
    return out / total


def _union(masks: list[np.ndarray], size: int) -> np.ndarray:
    """Pixelwise OR of (S, S) bool masks; all False for none."""
    out = np.zeros((size, size), dtype=bool)
    for mask in masks:
        out |= mask
    return out


def _jitter(rng: np.random.Generator, colour: tuple[int, ...], amount: float) -> np.ndarray:
    return np.asarray(colour, dtype=np.float32) + rng.uniform(-amount, amount, 3).astype(np.float32)


def _rgb(colour: np.ndarray) -> tuple[int, int, int]:
    r, g, b = np.clip(np.round(colour), 0, 255).astype(int).tolist()
    return r, g, b


# ------------------------------------------------------------------------------------------------ scenes


class _SceneBuilder:
    """Plans the objects of one scene on an occupancy mask, then paints them in a fixed layer order."""

    # Paint order, bottom to top; a later layer hides the earlier ones where they overlap.
    LAYERS = ("field", "vegetation", "water", "road", "runway", "parking", "building")

    def __init__(self, rng: np.random.Generator, size: int):
        self.rng = rng
        self.size = size
        self.unit = size / 256
        self.occupied = np.zeros((size, size), dtype=bool)
        self.instances: dict[str, list[_Instance]] = {c: [] for c in CLASS_CONCEPTS}
        self.main_road_rows: np.ndarray | None = None  # (S,) centreline row of the main road per column
        angle = rng.uniform(0, 2 * np.pi)
        self.sun = np.array([math.cos(angle), math.sin(angle)])  # direction shadows fall in

    def build(self) -> tuple[np.ndarray, dict[str, list[_Instance]]]:
        """Returns the image (S, S, 3) uint8 and the visible instances per class concept."""
        self._plan_water()
        self._plan_runway()
        self._plan_roads()
        self._plan_parking()
        self._plan_buildings()
        self._plan_fields()
        self._plan_vegetation()
        self._keep_visible_pixels()
        return self._paint(), self.instances

    def _add(self, concept: str, instance: _Instance) -> None:
        self.instances[concept].append(instance)
        self.occupied |= instance.mask

    def _fits(self, mask: np.ndarray, footprint: np.ndarray, area: float, inside: float) -> bool:
        """True when ``footprint`` is free and at least ``inside`` of the expected ``area`` is in the image."""
        return not (footprint & self.occupied).any() and mask.sum() >= inside * area

    def _random_point(self, low: float, high: float) -> np.ndarray:
        return self.rng.uniform(low, high, 2) * self.size

    # planning ------------------------------------------------------------------------------------------

    def _plan_water(self) -> None:
        rng, s = self.rng, self.size
        if rng.random() < 0.33:
            return
        kind = str(rng.choice(("lake", "river", "sea"), p=(0.45, 0.35, 0.20)))
        if kind == "lake":
            for index in range(1 if rng.random() < 0.75 else 2):
                for _ in range(10):
                    radius = s * rng.uniform(0.09, 0.17) * (0.7 if index else 1.0)
                    centre = self._random_point(0.15, 0.85)
                    shape = _blob_shape(rng, 0.35)
                    mask = _polygon_mask(s, _blob_polygon(centre, radius, shape))
                    footprint = _polygon_mask(s, _blob_polygon(centre, radius, shape, pad=0.05 * s))
                    if self._fits(mask, footprint, math.pi * radius**2, 0.6):
                        self._add("water", _Instance(mask, "lake"))
                        break
        elif kind == "river":
            edges = ["top", "bottom", "left", "right"]
            start = str(rng.choice(edges))
            opposite = {"top": "bottom", "bottom": "top", "left": "right", "right": "left"}[start]
            end = opposite if rng.random() < 0.7 else str(rng.choice([e for e in edges if e not in (start, opposite)]))
            p0, p1 = self._edge_point(start), self._edge_point(end)
            t = np.linspace(0.0, 1.0, 80)[:, None]
            direction = (p1 - p0) / np.linalg.norm(p1 - p0)
            normal = np.array([-direction[1], direction[0]])
            meander = sum(
                s * rng.uniform(*amplitude) * np.sin(2 * np.pi * rng.uniform(*cycles) * t + rng.uniform(0, 2 * np.pi))
                for amplitude, cycles in (((0.05, 0.11), (0.7, 1.5)), ((0.01, 0.035), (2.0, 3.5)))
            )
            points = p0 + t * (p1 - p0) + meander * normal
            mask = _band_mask(s, points, s * rng.uniform(0.045, 0.08))
            self._add("water", _Instance(mask, "river", {"from": start, "to": end}))
        else:
            edge = str(rng.choice(("top", "bottom", "left", "right")))
            along = np.linspace(-0.05, 1.05, 64) * s
            depth = s * rng.uniform(0.15, 0.3) + s * rng.uniform(0.02, 0.06) * np.sin(
                2 * np.pi * rng.uniform(0.5, 2.0) * along / s + rng.uniform(0, 2 * np.pi)
            )
            depth += np.cumsum(rng.normal(0, 0.006 * s, len(along)))
            # Outline as (along the edge, distance from it), closed beyond the edge, then placed on that edge.
            a = np.concatenate([along, [1.05 * s, -0.05 * s]])
            d = np.concatenate([depth, [-0.1 * s, -0.1 * s]])
            outline = {"top": (a, d), "bottom": (a, s - d), "left": (d, a), "right": (s - d, a)}[edge]
            mask = _polygon_mask(s, np.stack(outline, axis=-1))
            self._add("water", _Instance(mask, "sea", {"edge": edge}))

    def _edge_point(self, edge: str) -> np.ndarray:
        """A point just outside the image beyond ``edge``, away from the corners."""
        s, along = self.size, self.rng.uniform(0.2, 0.8) * self.size
        return {
            "top": np.array([along, -0.1 * s]),
            "bottom": np.array([along, 1.1 * s]),
            "left": np.array([-0.1 * s, along]),
            "right": np.array([1.1 * s, along]),
        }[edge]

    def _plan_runway(self) -> None:
        rng, s = self.rng, self.size
        if rng.random() >= 0.25:
            return
        for _ in range(30):
            angle = rng.uniform(0, np.pi)
            length, width = s * rng.uniform(0.6, 0.85), s * rng.uniform(0.06, 0.075)
            centre = self._random_point(0.3, 0.7)
            ends = _rect(centre, length, 0.0, angle)[:2]
            if ends.min() < 0.06 * s or ends.max() > 0.94 * s:
                continue
            mask = _polygon_mask(s, _rect(centre, length, width, angle))
            footprint = _polygon_mask(s, _rect(centre, length + 0.06 * s, width + 0.1 * s, angle))
            if self._fits(mask, footprint, length * width, 0.9):
                self._add("runway", _Instance(mask, "runway", {"centre": centre, "angle": angle,
                                                               "length": length, "width": width}))
                return

    def _plan_roads(self) -> None:
        rng, s = self.rng, self.size
        # Roads may bridge a river but never cross a lake, the sea or the runway.
        blocked = self.occupied & ~_union([w.mask for w in self.instances["water"] if w.kind == "river"], s)
        roads: list[_Instance] = []
        if rng.random() < 0.65:
            for _ in range(15):
                left, right = rng.uniform(0.15, 0.85, 2) * s
                middle = (left + right) / 2 + rng.uniform(-0.15, 0.15) * s
                points = _bezier(np.array([[-0.1 * s, left], [0.5 * s, middle], [1.1 * s, right]]), 48)
                road = self._road(points, blocked, "from the left edge to the right edge")
                if road is not None:
                    roads.append(road)
                    self.main_road_rows = np.interp(np.arange(s), points[:, 0], points[:, 1])
                    break
        if rng.random() < (0.5 if roads else 0.8):
            for _ in range(15):
                top, bottom = rng.uniform(0.15, 0.85, 2) * s
                if self.main_road_rows is not None and rng.random() < 0.5:
                    to_top = rng.random() < 0.5
                    start = np.array([top, self.main_road_rows[int(top)]])
                    end = np.array([bottom, -0.1 * s if to_top else 1.1 * s])
                    description = f"from the main road to the {'top' if to_top else 'bottom'} edge"
                else:
                    start, end = np.array([top, -0.1 * s]), np.array([bottom, 1.1 * s])
                    description = "from the top edge to the bottom edge"
                middle = (start + end) / 2 + [rng.uniform(-0.12, 0.12) * s, 0.0]
                road = self._road(_bezier(np.stack([start, middle, end]), 48), blocked, description)
                if road is not None:
                    roads.append(road)
                    break
        for road in roads:
            self._add("road", road)

    def _road(self, points: np.ndarray, blocked: np.ndarray, description: str) -> _Instance | None:
        width = self.size * self.rng.uniform(0.032, 0.042)
        if (_band_mask(self.size, points, width + 0.04 * self.size) & blocked).any():
            return None
        mask = _band_mask(self.size, points, width)
        return _Instance(mask, "road", {"points": points, "width": width, "description": description})

    def _beside_road(self, depth: float) -> tuple[np.ndarray, float] | None:
        """A centre and angle for a rectangle of ``depth`` set back from a random road, or None without roads."""
        roads = self.instances["road"]
        if not roads:
            return None
        road = roads[self.rng.integers(len(roads))]
        points, tangents = _resample(road.params["points"], 2.0 * self.unit)
        i = self.rng.integers(len(points))
        normal = np.array([-tangents[i, 1], tangents[i, 0]]) * self.rng.choice((-1.0, 1.0))
        setback = road.params["width"] / 2 + self.size * self.rng.uniform(0.012, 0.03) + depth / 2
        return points[i] + normal * setback, math.atan2(tangents[i, 1], tangents[i, 0])

    def _anywhere(self) -> tuple[np.ndarray, float]:
        """A random centre and angle for a rectangle placed without regard to roads."""
        return self._random_point(0.15, 0.85), self.rng.uniform(0, np.pi)

    def _plan_parking(self) -> None:
        rng, s = self.rng, self.size
        if rng.random() >= 0.4:
            return
        for _ in range(1 if rng.random() < 0.75 else 2):
            for _ in range(20):
                length, depth = s * rng.uniform(0.14, 0.24), s * rng.uniform(0.09, 0.13)
                centre, angle = self._beside_road(depth) or self._anywhere()
                mask = _polygon_mask(s, _rect(centre, length, depth, angle))
                footprint = _polygon_mask(s, _rect(centre, length + 0.03 * s, depth + 0.03 * s, angle))
                if self._fits(mask, footprint, length * depth, 0.85):
                    self._add("parking", _Instance(mask, "parking", {"centre": centre, "angle": angle,
                                                                     "length": length, "depth": depth}))
                    break

    def _plan_buildings(self) -> None:
        rng, s = self.rng, self.size
        if rng.random() >= (0.9 if self.instances["water"] else 0.75):
            return
        if self.instances["water"] and rng.random() < 0.9:
            self._plan_waterfront_building()
        for road in list(self.instances["road"]):
            if rng.random() < 0.75:
                self._plan_street(road)
        if rng.random() < (0.35 if self.instances["road"] else 0.8):
            self._plan_village()
        if rng.random() < 0.2:
            for _ in range(10):
                centre, angle = self._beside_road(s * 0.09) or self._anywhere()
                if self._try_building(centre, angle, s * rng.uniform(0.09, 0.14), s * rng.uniform(0.07, 0.1), "flat"):
                    break

    def _try_building(self, centre: np.ndarray, angle: float, length: float, depth: float,
                      roof: str | None = None) -> bool:
        rng, s = self.rng, self.size
        mask = _polygon_mask(s, _rect(centre, length, depth, angle))
        footprint = _polygon_mask(s, _rect(centre, length + 0.025 * s, depth + 0.025 * s, angle))
        if not self._fits(mask, footprint, length * depth, 0.9):
            return False
        self._add("building", _Instance(mask, "building", {
            "centre": centre, "angle": angle, "length": length, "depth": depth,
            "roof": roof or ("gable" if rng.random() < 0.6 else "flat"),
            "colour": _jitter(rng, _ROOF_COLOURS[rng.integers(len(_ROOF_COLOURS))], 10),
            "height": s * rng.uniform(0.012, 0.028),
        }))
        return True

    def _plan_waterfront_building(self) -> None:
        rng, s = self.rng, self.size
        water = self._class_mask("water")
        shore = _boundary_points(water)
        inside = (shore > 1).all(axis=1) & (shore < s - 2).all(axis=1)
        shore = shore[inside]
        if not len(shore):
            return
        smooth = Image.fromarray(water.astype(np.uint8) * 255).filter(ImageFilter.BoxBlur(4 * self.unit))
        grad_y, grad_x = np.gradient(np.asarray(smooth, dtype=np.float32))
        for _ in range(30):
            x, y = shore[rng.integers(len(shore))]
            outward = -np.array([grad_x[int(y), int(x)], grad_y[int(y), int(x)]])
            if np.linalg.norm(outward) < 1e-3:
                continue
            outward /= np.linalg.norm(outward)
            length, depth = s * rng.uniform(0.045, 0.075), s * rng.uniform(0.04, 0.06)
            centre = np.array([x, y]) + outward * (s * rng.uniform(0.012, 0.022) + depth / 2)
            if self._try_building(centre, math.atan2(outward[1], outward[0]) + np.pi / 2, length, depth):
                return

    def _plan_street(self, road: _Instance) -> None:
        rng, s = self.rng, self.size
        points, tangents = _resample(road.params["points"], s * rng.uniform(0.07, 0.095))
        run = int(rng.integers(3, 8))
        first = int(rng.integers(0, max(1, len(points) - run)))
        sides = (-1.0, 1.0) if rng.random() < 0.5 else (float(rng.choice((-1.0, 1.0))),)
        for i in range(first, min(len(points), first + run)):
            for side in sides:
                if rng.random() < 0.15:
                    continue
                length, depth = s * rng.uniform(0.04, 0.065), s * rng.uniform(0.04, 0.06)
                normal = np.array([-tangents[i, 1], tangents[i, 0]]) * side
                setback = road.params["width"] / 2 + s * rng.uniform(0.012, 0.025) + depth / 2
                angle = math.atan2(tangents[i, 1], tangents[i, 0])
                self._try_building(points[i] + normal * setback, angle, length, depth)

    def _plan_village(self) -> None:
        rng, s = self.rng, self.size
        centre, angle = self._random_point(0.2, 0.8), rng.uniform(0, np.pi)
        rows, cols, spacing = int(rng.integers(2, 4)), int(rng.integers(2, 5)), s * rng.uniform(0.09, 0.11)
        for r in range(rows):
            for c in range(cols):
                local = np.array([(c - (cols - 1) / 2) * spacing, (r - (rows - 1) / 2) * spacing])
                local += rng.normal(0, 0.008 * s, 2)
                self._try_building(_to_world(local, centre, angle), angle + rng.normal(0, 0.08),
                                   s * rng.uniform(0.04, 0.065), s * rng.uniform(0.04, 0.055))

    def _plan_fields(self) -> None:
        rng, s = self.rng, self.size
        if rng.random() >= 0.85:
            return
        if self.main_road_rows is not None and rng.random() < 0.7:
            # A farm block on each side of the main road, so that "north of the road" picks a strict subset.
            for north in (True, False):
                self._plan_field_block(north)
        for _ in range(int(rng.integers(1, 3))):
            self._plan_field_block(None)
        if rng.random() < 0.5:
            for _ in range(10):
                length, depth = s * rng.uniform(0.22, 0.3), s * rng.uniform(0.17, 0.24)
                if self._try_field(self._random_point(0.15, 0.85), rng.uniform(0, np.pi), length, depth):
                    break

    def _plan_field_block(self, north: bool | None) -> None:
        """A grid of fields around a random anchor; ``north`` puts the anchor above/below the main road."""
        rng, s = self.rng, self.size
        for _ in range(10):
            anchor = self._random_point(0.1, 0.9)
            if north is not None:
                road_row = self.main_road_rows[int(anchor[0])]
                low, high = (0.08 * s, road_row - 0.14 * s) if north else (road_row + 0.14 * s, 0.92 * s)
                if low >= high:
                    return
                anchor[1] = rng.uniform(low, high)
            angle = rng.normal(0, 0.3) + rng.choice((0.0, np.pi / 2))
            widths = s * rng.uniform(0.09, 0.17, int(rng.integers(2, 4)))
            heights = s * rng.uniform(0.08, 0.15, int(rng.integers(1, 3)))
            gap = s * rng.uniform(0.008, 0.016)
            xs = np.cumsum(widths + gap) - (widths + gap) / 2 - (widths.sum() + gap * len(widths)) / 2
            ys = np.cumsum(heights + gap) - (heights + gap) / 2 - (heights.sum() + gap * len(heights)) / 2
            placed = 0
            for x, w in zip(xs, widths):
                for y, h in zip(ys, heights):
                    if rng.random() < 0.85:
                        placed += self._try_field(_to_world(np.array([x, y]), anchor, angle), angle, w, h, gap)
            if placed:
                return

    def _try_field(self, centre: np.ndarray, angle: float, length: float, depth: float,
                   gap: float | None = None) -> bool:
        rng, s = self.rng, self.size
        gap = s * 0.012 if gap is None else gap
        mask = _polygon_mask(s, _rect(centre, length, depth, angle))
        footprint = _polygon_mask(s, _rect(centre, length + gap, depth + gap, angle))
        if not self._fits(mask, footprint, length * depth, 0.6):
            return False
        self._add("field", _Instance(mask, "field", {
            "colour": _jitter(rng, _FIELD_COLOURS[rng.integers(len(_FIELD_COLOURS))], 12),
            "stripe_angle": angle + rng.choice((0.0, np.pi / 2)),
            "period": s * rng.uniform(0.014, 0.028),
            "contrast": rng.uniform(0.06, 0.14),
        }))
        return True

    def _plan_vegetation(self) -> None:
        rng, s = self.rng, self.size
        if rng.random() >= 0.75:
            return
        keep_out = _dilate(self.occupied, max(1, round(2 * self.unit)))
        for _ in range(int(rng.integers(1, 5))):
            for _ in range(5):
                radius = s * rng.uniform(0.06, 0.15)
                blob = _polygon_mask(s, _blob_polygon(self._random_point(0.05, 0.95), radius, _blob_shape(rng, 0.45)))
                mask = blob & ~keep_out
                if mask.sum() >= max(0.4 * blob.sum(), 0.1 * math.pi * radius**2):
                    self.instances["vegetation"].append(_Instance(mask, "forest"))
                    keep_out |= mask
                    break

    def _keep_visible_pixels(self) -> None:
        hidden = np.zeros_like(self.occupied)
        for concept in reversed(self.LAYERS):
            for instance in self.instances[concept]:
                instance.mask = instance.mask & ~hidden
            for instance in self.instances[concept]:
                hidden |= instance.mask
            self.instances[concept] = [i for i in self.instances[concept] if i.mask.any()]

    # painting ------------------------------------------------------------------------------------------

    def _class_mask(self, concept: str) -> np.ndarray:
        return _union([i.mask for i in self.instances[concept]], self.size)

    def _paint(self) -> np.ndarray:
        rng, s = self.rng, self.size
        grain = _noise(rng, s, max(4, s // 6))
        canvas = self._paint_background(grain)
        self._paint_fields(canvas, grain)
        self._paint_forest(canvas)
        self._paint_water(canvas, grain)
        greys = {"road": rng.uniform(85, 115), "runway": rng.uniform(150, 176), "parking": rng.uniform(62, 82)}
        for concept, grey in greys.items():
            area = self._class_mask(concept)
            tint = rng.uniform(-4, 4, 3).astype(np.float32)
            canvas[area] = ((grey + tint) * (1 + 0.05 * grain[area])[:, None]).astype(np.float32)
        self._paint_runway_wear(canvas)
        overlay = Image.new("RGB", (s, s))
        alpha = Image.new("L", (s, s))
        self._draw_markings(ImageDraw.Draw(overlay), ImageDraw.Draw(alpha))
        _composite(canvas, overlay, alpha)
        self._paint_shadows(canvas)
        overlay, alpha = Image.new("RGB", (s, s)), Image.new("L", (s, s))
        self._draw_roofs(ImageDraw.Draw(overlay), ImageDraw.Draw(alpha))
        _composite(canvas, overlay, alpha)
        return self._finish(canvas)

    def _paint_background(self, grain: np.ndarray) -> np.ndarray:
        rng, s = self.rng, self.size
        light, dark = _BACKGROUNDS[rng.integers(len(_BACKGROUNDS))]
        light, dark = _jitter(rng, light, 8), _jitter(rng, dark, 8)
        mix = np.clip(_noise(rng, s, 3, octaves=3) * 1.2 + 0.5, 0, 1)
        brightness = 1 + 0.07 * _noise(rng, s, 6, octaves=3) + 0.04 * grain
        # Faint dirt tracks: line-like distractors that are not roads.
        tracks = Image.new("L", (s, s))
        draw = ImageDraw.Draw(tracks)
        for _ in range(int(rng.integers(0, 3))):
            edges = rng.choice(("top", "bottom", "left", "right"), 2, replace=False)
            control = np.stack([self._edge_point(e) for e in edges])
            control = np.insert(control, 1, self._random_point(0.2, 0.8), axis=0)
            draw.line(_flat(_bezier(control, 32)), fill=255, width=max(1, round(1.5 * self.unit)), joint="curve")
        brightness += (0.12 / 255) * np.asarray(tracks, dtype=np.float32)
        return (light + (dark - light) * mix[..., None]) * brightness[..., None]

    def _paint_fields(self, canvas: np.ndarray, grain: np.ndarray) -> None:
        for f in self.instances["field"]:
            ys, xs = np.nonzero(f.mask)
            p = f.params
            phase = (xs * math.cos(p["stripe_angle"]) + ys * math.sin(p["stripe_angle"])) * (2 * np.pi / p["period"])
            shade = 1 + p["contrast"] * np.tanh(2.5 * np.sin(phase)) + 0.05 * grain[ys, xs]
            canvas[ys, xs] = p["colour"] * shade[:, None]

    def _paint_forest(self, canvas: np.ndarray) -> None:
        forest = self._class_mask("vegetation")
        if not forest.any():
            return
        rng, s, unit = self.rng, self.size, self.unit
        base = _jitter(rng, _FOREST_COLOURS[rng.integers(len(_FOREST_COLOURS))], 6)
        crowns = Image.fromarray(np.broadcast_to(_rgb(base * 0.55), (s, s, 3)).astype(np.uint8))
        draw = ImageDraw.Draw(crowns)
        ys, xs = np.nonzero(forest)
        crown = max(1.0, 2.4 * unit)  # mean crown radius in pixels
        count = int(len(xs) / (2 * crown**2)) + 1
        radii = rng.uniform(0.67, 1.33, count) * crown
        picks = rng.integers(len(xs), size=count)
        colours = base * rng.uniform(0.8, 1.4, (count, 1)) + rng.uniform(-6, 6, (count, 3))
        colours = [tuple(c) for c in np.clip(colours, 0, 255).astype(int).tolist()]
        shadow = _rgb(base * 0.35)
        boxes = np.stack([xs[picks] - radii, ys[picks] - radii, xs[picks] + radii, ys[picks] + radii], axis=-1)
        offsets = np.tile(self.sun * 0.7, 2) * radii[:, None]
        for box, offset, colour in zip(boxes.tolist(), (boxes + offsets).tolist(), colours):
            draw.ellipse(offset, fill=shadow)
            draw.ellipse(box, fill=colour)
        canvas[forest] = np.asarray(crowns, dtype=np.float32)[forest]

    def _paint_water(self, canvas: np.ndarray, grain: np.ndarray) -> None:
        water = self._class_mask("water")
        if not water.any():
            return
        rng, unit = self.rng, self.unit
        deep = _jitter(rng, _WATER_DEEP[rng.integers(len(_WATER_DEEP))], 6)
        shallow = deep * 0.5 + np.array([95, 130, 120], dtype=np.float32) * 0.5
        soft = np.asarray(Image.fromarray(water.astype(np.uint8) * 255).filter(ImageFilter.GaussianBlur(3 * unit)),
                          dtype=np.float32) / 255
        depth = np.clip((soft[water] - 0.5) * 2.2, 0, 1) ** 0.6
        canvas[water] = (shallow + (deep - shallow) * depth[:, None]) * (1 + 0.04 * grain[water])[:, None]
        beach = (soft > 0.06) & ~water & ~self._class_mask("field") & ~self._class_mask("vegetation")
        canvas[beach] = canvas[beach] * 0.6 + np.array([222, 208, 170], dtype=np.float32) * 0.4

    def _paint_runway_wear(self, canvas: np.ndarray) -> None:
        for runway in self.instances["runway"]:
            p = runway.params
            ys, xs = np.nonzero(runway.mask)
            u, v = _to_local(xs, ys, p["centre"], p["angle"])
            worn = (np.abs(u) > 0.22 * p["length"]) & (np.abs(u) < 0.4 * p["length"]) & (np.abs(v) < 0.25 * p["width"])
            canvas[ys[worn], xs[worn]] *= 0.8

    def _draw_markings(self, draw: ImageDraw.ImageDraw, alpha: ImageDraw.ImageDraw) -> None:
        """Lane dashes, runway markings, parking stalls and cars, drawn in colour and into the alpha mask."""
        rng, s, unit = self.rng, self.size, self.unit
        thin = max(1, round(1.3 * unit))

        def line(points, colour, width=thin):
            draw.line(_flat(points), fill=colour, width=width)
            alpha.line(_flat(points), fill=255, width=width)

        def polygon(points, colour):
            draw.polygon(_flat(points), fill=colour)
            alpha.polygon(_flat(points), fill=255)

        lane = (224, 222, 212) if rng.random() < 0.6 else (214, 190, 84)
        roads = self.instances["road"]
        for index, road in enumerate(roads):
            others = _union([r.mask for i, r in enumerate(roads) if i != index], s)
            points, _ = _resample(road.params["points"], 2 * unit)
            period = 0.055 * s
            arc = np.arange(len(points)) * 2 * unit
            on = (arc % period) < 0.03 * s
            px = np.clip(points.astype(int), 0, s - 1)
            on &= ~others[px[:, 1], px[:, 0]]
            for a, b in zip(points[:-1][on[:-1] & on[1:]], points[1:][on[:-1] & on[1:]]):
                line(np.stack([a, b]), lane)
        for runway in self.instances["runway"]:
            p = runway.params
            length, width = p["length"], p["width"]

            def local_line(u0, v0, u1, v1, w=thin):
                line(_to_world(np.array([[u0, v0], [u1, v1]]), p["centre"], p["angle"]), (236, 236, 232), w)

            for side in (-1, 1):
                local_line(-length / 2, side * (width / 2 - 1.5 * unit), length / 2, side * (width / 2 - 1.5 * unit))
            for u in np.arange(-0.38 * length, 0.38 * length, 0.06 * s):
                local_line(u, 0.0, u + 0.035 * s, 0.0, max(1, round(1.6 * unit)))
            stripes = np.linspace(-0.38 * width, 0.38 * width, 8)
            for end in (-1, 1):
                for v in stripes:
                    local_line(end * 0.47 * length, v, end * 0.41 * length, v, max(1, round(width / 20)))
        for lot in self.instances["parking"]:
            p = lot.params
            length, depth = p["length"], p["depth"]
            stall, row = 0.024 * s, 0.34 * depth
            occupancy = rng.uniform(0.4, 0.9)
            for v0 in (-depth / 2 + 1.5 * unit, depth / 2 - 1.5 * unit - row):
                for u in np.arange(-length / 2 + 2 * unit, length / 2 - stall, stall):
                    edge = np.array([[u, v0], [u, v0 + row]])
                    line(_to_world(edge, p["centre"], p["angle"]), (205, 205, 200), max(1, round(0.8 * unit)))
                    if rng.random() < occupancy:
                        car = np.array([[u + 0.2 * stall, v0 + 0.1 * row], [u + 0.8 * stall, v0 + 0.1 * row],
                                        [u + 0.8 * stall, v0 + 0.9 * row], [u + 0.2 * stall, v0 + 0.9 * row]])
                        colour = _jitter(rng, _CAR_COLOURS[rng.integers(len(_CAR_COLOURS))], 8)
                        polygon(_to_world(car, p["centre"], p["angle"]), _rgb(colour))

    def _paint_shadows(self, canvas: np.ndarray) -> None:
        buildings = self.instances["building"]
        if not buildings:
            return
        shadow = Image.new("L", (self.size, self.size))
        draw = ImageDraw.Draw(shadow)
        for b in buildings:
            corners = _rect(b.params["centre"], b.params["length"], b.params["depth"], b.params["angle"])
            for step in np.linspace(0.2, 1.0, 5):
                draw.polygon(_flat(corners + self.sun * b.params["height"] * step), fill=255)
        canvas *= (1 - 0.5 / 255 * np.asarray(shadow, dtype=np.float32))[..., None]

    def _draw_roofs(self, draw: ImageDraw.ImageDraw, alpha: ImageDraw.ImageDraw) -> None:
        rng, unit = self.rng, self.unit
        for b in self.instances["building"]:
            p = b.params
            centre, angle, length, depth, colour = p["centre"], p["angle"], p["length"], p["depth"], p["colour"]
            alpha.polygon(_flat(_rect(centre, length, depth, angle)), fill=255)
            if p["roof"] == "gable":
                # The two roof halves face opposite ways: the one turned to the sun is brighter.
                normal = np.array([-math.sin(angle), math.cos(angle)])
                lit = 1.1 if normal @ self.sun < 0 else 0.8
                for side, shade in ((-1, lit), (1, 1.9 - lit)):
                    half = _rect(centre + normal * side * depth / 4, length, depth / 2, angle)
                    draw.polygon(_flat(half), fill=_rgb(colour * shade))
                ridge = _to_world(np.array([[-length / 2, 0.0], [length / 2, 0.0]]), centre, angle)
                draw.line(_flat(ridge), fill=_rgb(colour * 1.2), width=max(1, round(0.8 * unit)))
            else:
                draw.polygon(_flat(_rect(centre, length, depth, angle)), fill=_rgb(colour * 0.85))
                inset = 1.5 * unit
                draw.polygon(_flat(_rect(centre, length - 2 * inset, depth - 2 * inset, angle)), fill=_rgb(colour))
                for _ in range(int(rng.integers(0, 3))):
                    spot = np.array([rng.uniform(-0.3, 0.3) * length, rng.uniform(-0.3, 0.3) * depth])
                    box = _rect(_to_world(spot, centre, angle), 2.5 * unit, 2.5 * unit, angle)
                    draw.polygon(_flat(box), fill=_rgb(colour * 1.15))

    def _finish(self, canvas: np.ndarray) -> np.ndarray:
        """Camera look: slight blur, colour jitter and sensor noise, so pixels are not trivially separable."""
        rng, s = self.rng, self.size
        image = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
        arr = np.asarray(image.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 0.9) * self.unit)), dtype=np.float32)
        # Contrast about the mean, brightness and per-channel gain as one affine map (+0.5 rounds on truncation).
        contrast = rng.uniform(0.85, 1.15)
        gain = (rng.uniform(0.88, 1.12) * rng.uniform(0.94, 1.06, 3)).astype(np.float32)
        arr = arr * (contrast * gain) + (arr.mean() * (1 - contrast) * gain + 0.5)
        # Uniform noise of standard deviation 2..5: as good as Gaussian here and several times cheaper to draw.
        arr += (rng.random((s, s, 3), dtype=np.float32) - 0.5) * np.float32(rng.uniform(2.0, 5.0) * 12**0.5)
        return np.clip(arr, 0, 255, out=arr).astype(np.uint8)


def _composite(canvas: np.ndarray, overlay: Image.Image, alpha: Image.Image) -> None:
    a = np.asarray(alpha) > 0
    canvas[a] = np.asarray(overlay, dtype=np.float32)[a]


# ----------------------------------------------------------------------------------------------- samples


def _region(mask: np.ndarray) -> tuple[int, int]:
    """(row, column) third of the image holding the centroid of ``mask``."""
    ys, xs = np.nonzero(mask)
    size = mask.shape[0]
    return min(2, int(3 * ys.mean() / size)), min(2, int(3 * xs.mean() / size))


def _where(mask: np.ndarray) -> str:
    row, col = _region(mask)
    return f"{_REGION_PHRASES[row][col]} of the image"


def _describe(instances: list[_Instance], singular: str, plural: str) -> str:
    """'The lake in the upper left of the image.' / 'The three fields in the top and centre of the image.'"""
    if len(instances) == 1:
        return f"The {singular} {_where(instances[0].mask)}."
    largest_first = sorted(instances, key=lambda i: -int(i.mask.sum()))
    regions = list(dict.fromkeys(_REGION_NAMES[r][c] for r, c in (_region(i.mask) for i in largest_first)))
    count = _COUNT_WORDS[len(instances)] if len(instances) < len(_COUNT_WORDS) else str(len(instances))
    if len(regions) > 3:
        return f"The {count} {plural} spread across the image."
    listed = regions[0] if len(regions) == 1 else ", ".join(regions[:-1]) + " and " + regions[-1]
    return f"The {count} {plural} in the {listed} of the image."


def _describe_water(instances: list[_Instance]) -> str:
    kind = instances[0].kind
    if kind == "river":
        p = instances[0].params
        return f"The river flowing from the {p['from']} edge to the {p['to']} edge of the image."
    if kind == "sea":
        return f"The sea along the {instances[0].params['edge']} edge of the image."
    return _describe(instances, "lake", "lakes")


def _describe_roads(instances: list[_Instance]) -> str:
    if len(instances) == 1:
        return f"The road running {instances[0].params['description']}."
    first, second = (i.params["description"] for i in instances)
    return f"The two roads: one running {first}, the other {second}."


_CLASS_ANSWERS = {
    "water": _describe_water,
    "vegetation": lambda i: _describe(i, "forest", "forest patches"),
    "field": lambda i: _describe(i, "field", "fields"),
    "road": _describe_roads,
    "building": lambda i: _describe(i, "building", "buildings"),
    "runway": lambda i: _describe(i, "runway", "runways"),
    "parking": lambda i: _describe(i, "car park", "car parks"),
}


def _relational_targets(instances: dict[str, list[_Instance]], main_road_rows: np.ndarray | None,
                        size: int) -> list[_Target]:
    """The relational concepts that are well-defined in this scene (see the module docstring)."""
    targets = []
    fields = sorted(instances["field"], key=lambda i: -int(i.mask.sum()))
    if len(fields) >= 2 and fields[0].mask.sum() >= LARGEST_FIELD_RATIO * fields[1].mask.sum():
        targets.append(_Target("largest_field", fields[0].mask, f"The largest field, {_where(fields[0].mask)}."))
    buildings = instances["building"]
    if instances["water"] and len(buildings) >= 2:
        shore = _boundary_points(_union([w.mask for w in instances["water"]], size))
        distances = sorted((_distance(b.mask, shore), index) for index, b in enumerate(buildings))
        (nearest, index), (second, _) = distances[:2]
        if second - nearest >= NEAREST_WATER_MARGIN * size:
            mask = buildings[index].mask
            answer = f"The building closest to the water, {_where(mask)}."
            targets.append(_Target("building_nearest_water", mask, answer))
    if main_road_rows is not None and fields:
        north = [f for f in fields if _is_north(f.mask, main_road_rows)]
        if 0 < len(north) < len(fields):
            mask = _union([f.mask for f in north], size)
            answer = _describe(north, "field above the main road", "fields above the main road")
            targets.append(_Target("field_north_of_road", mask, answer))
    return targets


def _distance(mask: np.ndarray, points: np.ndarray) -> float:
    """Smallest distance in pixels between a pixel of ``mask`` and one of ``points`` (k, 2)."""
    edge = _boundary_points(mask)
    centre = edge.mean(axis=0)
    reach = np.hypot(*(edge - centre).T).max()
    # Exact, but only over the points that can be nearest: |p - centre| - reach bounds the distance from below.
    from_centre = np.hypot(*(points - centre).T)
    candidates = points[from_centre <= from_centre.min() + 2 * reach]
    diff = edge[:, None, :] - candidates[None, :, :]
    return float(np.sqrt((diff**2).sum(-1).min()))


def _is_north(mask: np.ndarray, road_rows: np.ndarray) -> bool:
    ys, xs = np.nonzero(mask)
    return ys.mean() < road_rows[int(round(xs.mean()))]


def _choose_targets(rng: np.random.Generator, instances: dict[str, list[_Instance]],
                    main_road_rows: np.ndarray | None, size: int, count: int) -> list[_Target]:
    """Up to ``count`` samples asking different concepts: class-level, relational or absent (no target)."""
    present = [c for c in CLASS_CONCEPTS if instances[c]]
    absent = [c for c in CLASS_CONCEPTS if not instances[c]]
    relational = _relational_targets(instances, main_road_rows, size)
    targets: list[_Target] = []
    for _ in range(count):
        draw = rng.random()
        preference = (("absent", "class", "relational") if draw < _ASK_NO_TARGET_P
                      else ("relational", "class", "absent") if draw < _ASK_NO_TARGET_P + _ASK_RELATIONAL_P
                      else ("class", "relational", "absent"))
        for kind in preference:
            if kind == "class" and present:
                concept = present.pop(int(rng.integers(len(present))))
                mask = _union([i.mask for i in instances[concept]], size)
                targets.append(_Target(concept, mask, _CLASS_ANSWERS[concept](instances[concept])))
                break
            if kind == "relational" and relational:
                targets.append(relational.pop(int(rng.integers(len(relational)))))
                break
            if kind == "absent" and absent:
                concept = absent.pop(int(rng.integers(len(absent))))
                targets.append(_Target(concept, np.zeros((size, size), dtype=bool), None))
                break
    return targets


# ----------------------------------------------------------------------------------------------- writing


def split_sizes(n: int) -> dict[str, int]:
    """Scenes per split for ``n`` scenes: 15% val and 15% test (at least one each), the rest train."""
    held_out = max(1, int(n * 0.15 + 0.5))
    return {"train": n - 2 * held_out, "val": held_out, "test": held_out}


def write_synthetic_dataset(out: Path, n: int, seed: int, image_size: int = 256, samples_per_scene: int = 3,
                            overwrite: bool = False) -> dict[str, int]:
    """Writes ``n`` scenes as out/{train,val,test}/{images,labels,QAs}; returns the samples per split.

    Scenes 0..n-1 go to train, val and test in consecutive blocks (``split_sizes``); scene i is drawn from
    ``np.random.default_rng([seed, i])`` alone, so its content does not depend on ``n``. Raises DataError
    on arguments that cannot make a dataset, or when a split folder already holds files and ``overwrite``
    is False (with ``overwrite`` the split's images/labels/QAs folders are emptied first).
    """
    out = Path(out)
    _check_arguments(out, n, seed, image_size, samples_per_scene)
    prepare_split_folders(out, SPLITS, overwrite)
    counts = dict.fromkeys(SPLITS, 0)
    sizes = split_sizes(n)
    splits = [split for split in SPLITS for _ in range(sizes[split])]
    for scene_index, split in enumerate(splits):
        rng = np.random.default_rng([seed, scene_index])
        builder = _SceneBuilder(rng, image_size)
        image, instances = builder.build()
        targets = _choose_targets(rng, instances, builder.main_road_rows, image_size, samples_per_scene)
        # Phrasings come from their own stream so that a scene's content stays the same in any split.
        phrasing_rng = np.random.default_rng([seed, scene_index, 1])
        jpeg = _encode(Image.fromarray(image), "JPEG", quality=95)
        folder = out / split
        for k, target in enumerate(targets):
            stem = f"{scene_index:05d}_{k}"
            (folder / "images" / f"{stem}.jpg").write_bytes(jpeg)
            label = Image.fromarray(target.mask.astype(np.uint8) * 255)
            (folder / "labels" / f"{stem}.png").write_bytes(_encode(label, "PNG"))
            qa = {
                "questions": _questions(phrasing_rng, target.concept, split),
                "answer": [] if target.answer is None else [target.answer],
                "concept": target.concept,
                "scene": scene_index,
            }
            (folder / "QAs" / f"{stem}.json").write_text(json.dumps(qa, indent=2) + "\n", encoding="utf-8")
        counts[split] += len(targets)
    return counts


def _check_arguments(out: Path, n: int, seed: int, image_size: int, samples_per_scene: int) -> None:
    if out.exists() and not out.is_dir():
        raise DataError(f"synthetic data output {out} exists and is not a folder")
    if n < len(SPLITS):
        raise DataError(f"synthetic data needs at least {len(SPLITS)} scenes (one per split), got n={n}")
    if seed < 0:
        raise DataError(f"synthetic data seed must be >= 0, got {seed}")
    if image_size < MIN_IMAGE_SIZE:
        raise DataError(f"synthetic image size must be >= {MIN_IMAGE_SIZE} pixels, got {image_size}")
    if not 1 <= samples_per_scene <= len(CLASS_CONCEPTS):
        raise DataError(f"samples per scene must be in 1..{len(CLASS_CONCEPTS)}, got {samples_per_scene}")


def _questions(rng: np.random.Generator, concept: str, split: str) -> list[str]:
    """3 to 5 different phrasings of ``concept`` from the split's own pool, in random order."""
    pool = PHRASINGS[concept][split]
    count = min(len(pool), int(rng.integers(3, 6)))
    return [pool[i] for i in rng.permutation(len(pool))[:count]]


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()
