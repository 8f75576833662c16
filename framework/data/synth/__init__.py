"""Procedural top-down aerial scenes written in the EarthReason layout: the project's embedded demo data.

Layout (exactly what the EarthReason readers expect, plus two extra JSON keys they ignore)::

    out/{train,val,test}/images/<stem>.jpg      RGB JPEG, quality 95
    out/{train,val,test}/labels/<stem>.png      8-bit grayscale, 255 = target, 0 elsewhere
    out/{train,val,test}/instances/<stem>.png   8-bit grayscale instance ids: 0 = not a target, 1..n = the
                                                target's n instances by decreasing visible area; ids > 0 are
                                                exactly the label's target pixels
    out/{train,val,test}/QAs/<stem>.json        {"questions": [3-5 phrasings of one query],
                                                 "answer": [one sentence] or [] when nothing is the target,
                                                 "concept": concept id, "scene": scene index}

``<stem>`` is ``<scene:05d>_<k>``: one sample k of a scene per stem, each with another question and mask; the
scene's image is written once, as ``<scene>_0.jpg``, and the other samples' images are symlinks to it (relative,
in the same folder), so that the data layer knows they share one image. Scenes are split 70/15/15 by scene index
into train/val/test, so no scene is shared between splits, and every split draws its questions from its own
phrasing pool (``PHRASINGS``), so val/test questions are never seen in training.

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

Target instances: a class-level concept has one instance per visible instance of its class, ``largest_field``
and ``building_nearest_water`` one, ``field_north_of_road`` one per field above the main road, an absent concept
none. Visible instances of one class may overlap (roads at a crossing): there the smaller instance's id wins.

About ``NO_TARGET_SHARE`` of samples ask for a class absent from the scene (empty answer, all-zero
label) and about ``RELATIONAL_SHARE`` ask a relational concept; the k samples of one scene ask k
different concepts. Everything is drawn from ``np.random.default_rng([seed, scene_index])``, so a scene
depends only on (seed, scene index, image size) and equal arguments write byte-identical files.

Modules: ``concepts`` (split names, concept ids, shares and thresholds), ``phrasings`` (question pools and
answer sentences), ``geometry`` (shapes rasterised to masks), ``scene`` (the scene builder), ``targets``
(relational concepts and the choice of each sample's target) and ``writer`` (the dataset on disk).
"""

from framework.data.synth.concepts import (
    CLASS_CONCEPTS,
    CONCEPTS,
    LARGEST_FIELD_RATIO,
    NEAREST_WATER_MARGIN,
    NO_TARGET_SHARE,
    RELATIONAL_CONCEPTS,
    RELATIONAL_SHARE,
    SPLITS,
)
from framework.data.synth.phrasings import PHRASINGS

# Private names kept here because tests build single scenes and check relational definitions as synth.<name>.
from framework.data.synth.scene import _Instance, _SceneBuilder  # noqa: F401
from framework.data.synth.targets import _is_north, _relational_targets  # noqa: F401
from framework.data.synth.writer import MIN_IMAGE_SIZE, split_sizes, write_synthetic_dataset

__all__ = [
    "CLASS_CONCEPTS",
    "CONCEPTS",
    "LARGEST_FIELD_RATIO",
    "MIN_IMAGE_SIZE",
    "NEAREST_WATER_MARGIN",
    "NO_TARGET_SHARE",
    "PHRASINGS",
    "RELATIONAL_CONCEPTS",
    "RELATIONAL_SHARE",
    "SPLITS",
    "split_sizes",
    "write_synthetic_dataset",
]
