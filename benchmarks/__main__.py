"""``python -m benchmarks [--quick] [--out DIR] [--only SECTIONS]``: run the suite, write JSON + markdown."""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import ceiling, compression, deformable, evaldata, forward, questions, scene, training
from benchmarks.common import Section, machine
from benchmarks.models import DEMO, EXPERIMENT, build, faithful_config, image_size
from benchmarks.report import markdown
from framework.core.config import load_config

SECTIONS = ("ceiling", "forward", "compression", "deformable", "training", "questions", "scene", "evaldata")
RESULTS = Path(__file__).resolve().parent / "results"


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="reduced models and sizes: minutes instead of ~20")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"output folder (default {RESULTS})")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated sections to run (default all: {','.join(SECTIONS)})")
    args = parser.parse_args(argv)
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(args.only) - set(SECTIONS))
    if unknown:
        parser.error(f"--only: unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    return args


def run_sections(only: list[str], quick: bool, report: Callable[[list[Section]], None]) -> list[Section]:
    """The sections in ``only``, in suite order; the ceiling always runs (the others are relative to it).
    ``report(sections so far)`` after each one, so an interrupted run leaves what it measured."""
    done: list[Section] = []

    def add(fn, *args) -> Section:
        started = time.perf_counter()
        section = fn(*args)
        section.seconds = time.perf_counter() - started
        done.append(section)
        print(f"[benchmarks] {section.key}: {section.seconds:.0f} s", file=sys.stderr, flush=True)
        report(done)
        return section

    ceiling_gflops = add(ceiling.run, quick).data["fp32_gflops"]
    size = image_size(quick)
    if {"forward", "compression", "questions"} & set(only):
        model = build(faithful_config(quick))
        if "forward" in only:
            add(forward.run, model, size, ceiling_gflops, quick)
        if "compression" in only:
            add(compression.run, model, [size, 2 * size], quick)
        if "questions" in only:
            demo_config = load_config(DEMO)
            demo = build(demo_config["model"])
            faithful = {**load_config(EXPERIMENT), "model": faithful_config(quick)}
            faithful["data"] = {**faithful["data"], "image_size": size}
            label = "faithful (reduced)" if quick else "faithful (Swin-B + Phi-1.5)"
            add(questions.run, {label: (model, faithful, "faithful"),
                                "demo (EfficientNet-Lite0 + SmolLM2)": (demo, demo_config, "demo")}, quick)
            del demo
        del model
        gc.collect()
    if "deformable" in only:
        add(deformable.run, size, quick)
    if "scene" in only:
        demo_config = load_config(DEMO)
        add(scene.run, build(demo_config["model"]), demo_config, quick)
        gc.collect()
    demo_rate = None
    if "training" in only:
        trained = add(training.run, quick)
        demo_rate = trained.data["demo 256 x2" if quick else "demo 256 x8"]["samples_per_s"]
    if "evaldata" in only:
        add(evaldata.run, quick, demo_rate)
    return done


def write(args: argparse.Namespace, sections: list[Section], started: float, load_before: list[float],
          complete: bool) -> dict[str, Any]:
    """Write ``<host>-<date>[-quick].json`` and ``.md`` under ``args.out``; returns the JSON document."""
    info = machine()
    date = datetime.date.today().isoformat()
    order = {key: i for i, key in enumerate(SECTIONS)}
    sections = sorted(sections, key=lambda s: order[s.key])
    result = {
        "date": date,
        "mode": "quick" if args.quick else "full",
        "complete": complete,
        "command": "python -m benchmarks" + (" --quick" if args.quick else "")
                   + (f" --only {','.join(args.only)}" if args.only != list(SECTIONS) else ""),
        "machine": info,
        "load_before": load_before,
        "load_after": info["load_average"],
        "seconds": time.perf_counter() - started,
        "targets_met": all(t.met for s in sections for t in s.targets),
        "sections": [s.as_dict() for s in sections],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"{info['host']}-{date}" + ("-quick" if args.quick else "")
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=1, default=float) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(result))
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    started = time.perf_counter()
    load_before = list(os.getloadavg())
    sections = run_sections(args.only, args.quick,
                            lambda done: write(args, done, started, load_before, complete=False))
    result = write(args, sections, started, load_before, complete=True)
    print(f"[benchmarks] wrote {args.out} in {result['seconds']:.0f} s", file=sys.stderr)
    return result

if __name__ == "__main__":
    main()
