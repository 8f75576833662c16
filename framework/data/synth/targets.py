"""What each sample of a scene asks for: the target record, the relational concepts (largest_field,
building_nearest_water, field_north_of_road) computed from the visible instance masks, and the draw of a
scene's k different targets, class-level, relational or absent."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from framework.data.synth.concepts import CLASS_CONCEPTS, LARGEST_FIELD_RATIO, NEAREST_WATER_MARGIN
from framework.data.synth.geometry import _boundary_points, _union
from framework.data.synth.phrasings import _CLASS_ANSWERS, _describe, _where
from framework.data.synth.scene import _Instance

# Per-sample probabilities of asking a no-target / relational question; higher than the target shares
# because a scene cannot always offer one (then a class-level concept is asked instead).
_ASK_NO_TARGET_P = 0.10
_ASK_RELATIONAL_P = 0.45


@dataclass
class _Target:
    """What one sample asks for: ``instances`` the target objects, each the (S, S) bool mask of one visible
    instance (they overlap where the objects do, e.g. roads at a crossing; none when the concept is absent),
    ``mask`` (S, S) bool their union, ``answer`` None when the concept is absent."""

    concept: str
    mask: np.ndarray
    answer: str | None
    instances: list[np.ndarray]


def _target(concept: str, instances: list[np.ndarray], answer: str | None, size: int) -> _Target:
    """The target of ``instances`` (each (S, S) bool), its mask their union."""
    return _Target(concept, _union(instances, size), answer, instances)


def _relational_targets(instances: dict[str, list[_Instance]], main_road_rows: np.ndarray | None,
                        size: int) -> list[_Target]:
    """The relational concepts that are well-defined in this scene (see the package docstring)."""
    targets = []
    fields = sorted(instances["field"], key=lambda i: -int(i.mask.sum()))
    if len(fields) >= 2 and fields[0].mask.sum() >= LARGEST_FIELD_RATIO * fields[1].mask.sum():
        answer = f"The largest field, {_where(fields[0].mask)}."
        targets.append(_target("largest_field", [fields[0].mask], answer, size))
    buildings = instances["building"]
    if instances["water"] and len(buildings) >= 2:
        shore = _boundary_points(_union([w.mask for w in instances["water"]], size))
        distances = sorted((_distance(b.mask, shore), index) for index, b in enumerate(buildings))
        (nearest, index), (second, _) = distances[:2]
        if second - nearest >= NEAREST_WATER_MARGIN * size:
            mask = buildings[index].mask
            answer = f"The building closest to the water, {_where(mask)}."
            targets.append(_target("building_nearest_water", [mask], answer, size))
    if main_road_rows is not None and fields:
        north = [f for f in fields if _is_north(f.mask, main_road_rows)]
        if 0 < len(north) < len(fields):
            answer = _describe(north, "field above the main road", "fields above the main road")
            targets.append(_target("field_north_of_road", [f.mask for f in north], answer, size))
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
                answer = _CLASS_ANSWERS[concept](instances[concept])
                targets.append(_target(concept, [i.mask for i in instances[concept]], answer, size))
                break
            if kind == "relational" and relational:
                targets.append(relational.pop(int(rng.integers(len(relational)))))
                break
            if kind == "absent" and absent:
                concept = absent.pop(int(rng.integers(len(absent))))
                targets.append(_target(concept, [], None, size))
                break
    return targets
