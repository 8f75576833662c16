"""One procedural scene: the scene builder that plans water, runway, roads, car parks, buildings, fields and
forest on an occupancy mask and paints them into an RGB image, with the instance record it returns, the
palettes, colour jitter and value noise it paints with."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from framework.data.synth.concepts import CLASS_CONCEPTS
from framework.data.synth.geometry import (
    _band_mask,
    _bezier,
    _blob_polygon,
    _blob_shape,
    _boundary_points,
    _dilate,
    _flat,
    _polygon_mask,
    _rect,
    _resample,
    _to_local,
    _to_world,
    _union,
)

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


@dataclass
class _Instance:
    """One object of a scene: ``mask`` is (S, S) bool, planned first, then reduced to its visible pixels."""

    mask: np.ndarray
    kind: str
    params: dict = field(default_factory=dict)


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


def _jitter(rng: np.random.Generator, colour: tuple[int, ...], amount: float) -> np.ndarray:
    return np.asarray(colour, dtype=np.float32) + rng.uniform(-amount, amount, 3).astype(np.float32)


def _rgb(colour: np.ndarray) -> tuple[int, int, int]:
    r, g, b = np.clip(np.round(colour), 0, 255).astype(int).tolist()
    return r, g, b


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
