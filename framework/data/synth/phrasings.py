"""The words of every sample: the question pools per concept and split (``PHRASINGS``) with the draw of one
sample's questions, and the answer sentences that say where a concept's instances lie in the image."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from framework.data.synth.scene import _Instance


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


def _questions(rng: np.random.Generator, concept: str, split: str) -> list[str]:
    """3 to 5 different phrasings of ``concept`` from the split's own pool, in random order."""
    pool = PHRASINGS[concept][split]
    count = min(len(pool), int(rng.integers(3, 6)))
    return [pool[i] for i in rng.permutation(len(pool))[:count]]


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
