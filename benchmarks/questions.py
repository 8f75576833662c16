"""Section 6: several questions about one image and about a tiled scene, through ``segearth predict``'s own path
(``Predictor`` + ``write_predictions`` with its ``profile.json``, after the model is loaded). The image parts
(encoder, compressor, the head's pixel decoder) run once per tile for all questions, and the LLM runs the prompt
before the question once per tile; cost = the seconds of predicting (reading the image, the model, post-processing;
the files are written apart and reported beside it)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from benchmarks.common import Section, Target
from framework.infer.outputs import write_predictions
from framework.infer.predictor import Predictor

COUNTS = (1, 16)
TARGETS = {"faithful": 3.0, "demo": 6.0}  # 16 questions / 1 question, by model family
PLACES = ["harbour", "airport", "stadium", "park", "parking lot", "river bank", "construction site", "farm field",
          "roundabout", "beach", "school", "bridge", "rail yard", "solar farm", "golf course", "marina"]


def questions(n: int, trial: int) -> list[str]:
    """``n`` distinct questions, different for every ``trial`` (no answer cached from an earlier trial)."""
    return [f"Where in this {PLACES[i]} could a helicopter land, survey {trial}?" for i in range(n)]


def profile(predictor: Predictor, image: Path, asked: list[str], out: Path) -> dict[str, Any]:
    """The ``profile.json`` of predicting ``asked`` about ``image`` into ``out`` (replaced)."""
    write_predictions(predictor, [(image, q) for q in asked], out, profile={})
    return json.loads((out / "profile.json").read_text())


def scene(side: int, seed: int = 0) -> np.ndarray:
    """A smooth random RGB scene [side,side,3] (structure at a few scales, not white noise)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 255, (max(side // 32, 2), max(side // 32, 2), 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((side, side), Image.BICUBIC), dtype=np.int16)
    return np.clip(smooth + rng.integers(-20, 20, (side, side, 3)), 0, 255).astype(np.uint8)


def run(models: dict[str, tuple[object, dict, str]], quick: bool) -> Section:
    """``models``: name -> (model, its experiment config, family ``faithful`` | ``demo``)."""
    section = Section(
        key="questions",
        title="Several questions about one image and a tiled scene, through segearth predict"
        + (" (--quick: reduced model)" if quick else ""),
        columns=["model", "input", "tiles", "questions", "predict s", "of which LLM", "encoder / compressor / "
                 "pixel decoder rows", "write s", "cost vs 1 question"],
    )
    results: dict[str, dict[str, Any]] = {}
    trial = 0
    with tempfile.TemporaryDirectory() as folder:
        for name, (model, config, family) in models.items():
            size = config["data"]["image_size"]
            predictor = Predictor(model, config, batch_size=16, answer_tokens=0)  # the masks only
            inputs = {}
            for label, side in (("one image", size), ("tiled scene", size * 3 // 2)):
                inputs[label] = Path(folder) / f"{label.replace(' ', '_')}_{side}.png"
                Image.fromarray(scene(side)).save(inputs[label])
            profile(predictor, inputs["one image"], questions(1, trial), Path(folder) / "out")  # warm-up
            results[name] = {}
            for label, image in inputs.items():
                runs = {}
                for n in COUNTS:
                    trial += 1
                    runs[n] = profile(predictor, image, questions(n, trial), Path(folder) / "out")
                    parts = runs[n]["parts"]
                    image_rows = "/".join(str(parts.get(p, {}).get("rows", 0))
                                          for p in ("encoder", "compressor", "pixel decoder"))
                    section.rows.append([
                        name, f"{label} {Image.open(image).width}²", runs[n]["tiles"], n,
                        round(runs[n]["predict_s"], 3), round(parts["llm"]["seconds"], 3), image_rows,
                        round(runs[n]["write_s"], 3), f"{runs[n]['predict_s'] / runs[1]['predict_s']:.1f}x",
                    ])
                    tiles = runs[n]["tiles"]
                    once = all(parts[p]["rows"] == tiles for p in ("encoder", "pixel decoder", "compressor")
                               if p in parts)
                    section.targets.append(Target(
                        f"{name}, {label}, {n} question(s): image parts run once per tile (1 = yes)",
                        float(once), 1.0, ">="))
                ratio = runs[16]["predict_s"] / runs[1]["predict_s"]
                section.targets.append(Target(f"{name}, {label}: 16 questions / 1 question", ratio,
                                              TARGETS[family], "<"))
                results[name][label] = {str(n): run for n, run in runs.items()}
                llm_share = runs[16]["parts"]["llm"]["seconds"] / runs[16]["predict_s"]
                if ratio >= TARGETS[family] and llm_share > 0.5:
                    section.notes.append(
                        f"{name}, {label}: bound by the LLM ({llm_share:.0%} of the 16 questions' "
                        f"{runs[16]['predict_s']:.3f} s): each question's own tokens run through it."
                    )
    section.data = results
    return section
