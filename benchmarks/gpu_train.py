"""Training throughput and memory of the full-size SegEarth-R1 model per memory preset, on one CUDA device.

    python benchmarks/gpu_train.py [--out benchmarks/results/gpu_train] [--steps 8]
    python benchmarks/gpu_train.py --smoke      # CPU, tiny widths: checks the script end to end (no GPU numbers)
    python benchmarks/gpu_train.py --estimate   # CPU, no compute: parameter / gradient / optimiser memory per preset

For each preset (``experiments/segearth_r1/24gb.yaml``: frozen bf16 Swin, LoRA on a bf16 Phi-1.5, checkpointing;
``faithful_zero2.yaml``: full LLM fine-tuning) the model is built at full size with random weights (the presets'
architecture, ``experiments/segearth_r1/earthreason.yaml``), and trained on random 1024² images with bf16 autocast
and AdamW (on one device ZeRO-2 shards nothing, so plain AdamW has the same memory; DeepSpeed is not needed here).

Measured per preset: samples/s over ``--steps`` timed steps (after warm-up, no synchronisation inside a step);
the step time split into encoder / compressor / LLM / projector / mask head forward, loss, backward and optimiser
(separate steps with a CUDA synchronisation around each part, so the parts add up to a little more than a step);
peak allocated memory (``torch.cuda.max_memory_allocated``); model FLOPs per step (``torch.utils.flop_counter``
over one forward+backward without activation checkpointing's recomputation) and MFU = FLOPs / step time / the bf16 matmul peak measured on the same card (best of
square 8192 matmuls). Writes ``gpu_train.json`` and ``gpu_train.md`` under ``--out``. Sized to finish well within
5 minutes on one H100.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from framework.core.slots import SLOT_NAMES  # noqa: E402

PRESETS = {"24gb": "experiments/segearth_r1/24gb.yaml", "faithful": "experiments/segearth_r1/faithful_zero2.yaml"}
# --smoke: the presets' training options (frozen, dtype, LoRA, checkpointing) on CPU-sized widths
SMOKE = [
    "model.encoder.variant=nano",
    "model.llm.config.hidden_size=64",
    "model.llm.config.intermediate_size=128",
    "model.llm.config.num_hidden_layers=2",
    "model.llm.config.num_attention_heads=4",
    "model.llm.config.vocab_size=300",
    "model.llm.embedding_rows=null",
    "model.projector.dim=64",
    "model.projector.heads=2",
    "model.projector.dim_head=32",
    "model.mask_head.hidden_dim=32",
    "model.mask_head.mask_dim=32",
    "model.mask_head.enc_layers=1",
    "model.mask_head.dec_layers=2",
    "data.image_size=128",
    "loss.num_points=1024",
]
QUESTIONS = [
    "Which areas would flood first if the river rose?",
    "Where could a small plane land in an emergency?",
    "Which roofs would be best for solar panels?",
    "Where do people park their cars?",
]


def load_preset(name: str, smoke: bool) -> dict[str, Any]:
    from framework.core.config import load_config

    return load_config(REPO / PRESETS[name], SMOKE if smoke else [])


def build_task(cfg: dict[str, Any], device: torch.device):
    """The preset's ``SegEarthTask`` (random init, built on ``device``) and an AdamW over its trainable weights,
    with the learning rates ``configure_optimizers`` gives."""
    from framework.train.task import SegEarthTask

    torch.manual_seed(0)
    with device:
        task = SegEarthTask(cfg).to(device).train()
    params = [p for p in task.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg["optim"]["lr"], weight_decay=cfg["optim"]["weight_decay"])
    return task, optimizer


def batch(cfg: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Random images and masks of the preset's size, ``data.batch_size`` samples, with questions and answers."""
    n, size = cfg["data"]["batch_size"], cfg["data"]["image_size"]
    g = torch.Generator().manual_seed(0)
    return {
        "image": torch.rand(n, 3, size, size, generator=g).to(device),
        "mask": (torch.rand(n, size, size, generator=g) > 0.7).float().to(device),
        "question": [QUESTIONS[i % len(QUESTIONS)] for i in range(n)],
        "answer": ["Sure, it is [SEG]."] * n,
    }


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16)


def step(task, optimizer, data: dict[str, Any], device: torch.device) -> float:
    """One training step (forward, loss, backward, optimiser); returns the loss."""
    with autocast(device):
        answers = data["answer"] if task.config["loss"]["lm_weight"] > 0 else None
        out = task.model(data["image"], data["question"], answers=answers)
        loss = task._loss(out, data["mask"], point_sampled=task.config["loss"]["point_sample"])["loss"]
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def breakdown(task, optimizer, data: dict[str, Any], device: torch.device) -> dict[str, float]:
    """Milliseconds of each slot's forward (synchronised hooks around each slot), loss, backward, optimiser."""
    times: dict[str, float] = {}
    started: dict[str, float] = {}
    handles = []
    patched: list[tuple[torch.nn.Module, str]] = []
    for slot, module in task.model.slots().items():
        def pre(_m, _i, slot=slot):
            sync(device)
            started[slot] = time.perf_counter()

        def post(_m, _i, _o, slot=slot):
            sync(device)
            times[slot] = times.get(slot, 0.0) + 1000 * (time.perf_counter() - started[slot])

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
        # a split head is called through pixel_features + decode (once per distinct image, then per row), not forward
        for part in ("pixel_features", "decode") if hasattr(module, "pixel_features") else ():
            def timed_part(*args, _fn=getattr(module, part), _slot=slot):
                pre(None, None, slot=_slot)
                out = _fn(*args)
                post(None, None, None, slot=_slot)
                return out

            setattr(module, part, timed_part)
            patched.append((module, part))
    try:
        sync(device)
        t0 = time.perf_counter()
        with autocast(device):
            answers = data["answer"] if task.config["loss"]["lm_weight"] > 0 else None
            out = task.model(data["image"], data["question"], answers=answers)
            sync(device)
            t1 = time.perf_counter()
            loss = task._loss(out, data["mask"], point_sampled=task.config["loss"]["point_sample"])["loss"]
        sync(device)
        t2 = time.perf_counter()
        loss.backward()
        sync(device)
        t3 = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        t4 = time.perf_counter()
    finally:
        for handle in handles:
            handle.remove()
        for module, part in patched:
            delattr(module, part)  # the class's method again
    parts = {slot: round(times.get(slot, 0.0), 2) for slot in SLOT_NAMES}
    parts["forward (other)"] = round(1000 * (t1 - t0) - sum(parts.values()), 2)
    parts.update(loss=round(1000 * (t2 - t1), 2), backward=round(1000 * (t3 - t2), 2), optimizer=round(1000 * (t4 - t3), 2))
    return parts


def step_flops(task, data: dict[str, Any], device: torch.device) -> int:
    """Model FLOPs of one forward + backward (matmuls, convolutions, attention), as PyTorch's counter sees them,
    with activation checkpointing turned off first (model FLOPs leave the recomputation out); the task is used
    for nothing else afterwards."""
    from torch.utils.flop_counter import FlopCounterMode

    for module in task.model.slots().values():
        if hasattr(module, "set_grad_checkpointing"):
            module.set_grad_checkpointing(False)
    with FlopCounterMode(display=False) as counter:
        with autocast(device):
            answers = data["answer"] if task.config["loss"]["lm_weight"] > 0 else None
            out = task.model(data["image"], data["question"], answers=answers)
            loss = task._loss(out, data["mask"], point_sampled=task.config["loss"]["point_sample"])["loss"]
        loss.backward()
    task.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def matmul_peak_tflops(device: torch.device, n: int = 8192, repeat: int = 20) -> float:
    """Best bf16 matmul rate of this card over ``repeat`` square ``n``-matmuls."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(repeat):
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e12


def parameter_memory(task, cfg: dict[str, Any]) -> dict[str, Any]:
    """Parameters per slot (trainable / frozen) and the GiB of weights, gradients and AdamW state they need with bf16
    autocast: trainable weights fp32 + fp32 gradients + two fp32 moments (16 B each), frozen weights as stored.
    With ``trainer.strategy: deepspeed_stage_2`` on N devices the gradients and moments of each device are 1/N."""
    per_slot = {}
    state_bytes = 0
    for slot, module in task.model.slots().items():
        trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
        frozen = [p for p in module.parameters() if not p.requires_grad]
        per_slot[slot] = {"trainable_M": round(trainable / 1e6, 2), "frozen_M": round(sum(p.numel() for p in frozen) / 1e6, 2)}
        state_bytes += 16 * trainable + sum(p.numel() * p.element_size() for p in frozen)
    return {"slots": per_slot, "weights_grads_adam_GiB": round(state_bytes / 2**30, 2)}


def measure(name: str, device: torch.device, steps: int, smoke: bool, peak: float | None) -> dict[str, Any]:
    cfg = load_preset(name, smoke)
    task, optimizer = build_task(cfg, device)
    data = batch(cfg, device)
    result: dict[str, Any] = {"preset": name, "config": PRESETS[name], "batch": cfg["data"]["batch_size"],
                              "image_size": cfg["data"]["image_size"], **parameter_memory(task, cfg)}
    for _ in range(1 if smoke else 3):  # warm-up: allocator, kernels, autotuning
        step(task, optimizer, data, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    t = time.perf_counter()
    losses = [step(task, optimizer, data, device) for _ in range(steps)]
    sync(device)
    seconds = (time.perf_counter() - t) / steps
    result.update(step_ms=round(1000 * seconds, 1), samples_per_s=round(cfg["data"]["batch_size"] / seconds, 3))
    result["finite_losses"] = all(map(lambda v: v == v and abs(v) != float("inf"), losses))
    result["peak_GiB"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None
    result["breakdown_ms"] = breakdown(task, optimizer, data, device)
    flops = step_flops(task, data, device)
    result["tflop_per_step"] = round(flops / 1e12, 3)
    result["mfu"] = round(flops / seconds / (peak * 1e12), 4) if peak else None
    del task, optimizer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def estimate(name: str) -> dict[str, Any]:
    """``parameter_memory`` of the full-size preset, built on the meta device (no memory, no compute)."""
    cfg = load_preset(name, smoke=False)
    with torch.device("meta"):
        from framework.train.task import SegEarthTask

        task = SegEarthTask(cfg)
    return {"preset": name, "config": PRESETS[name], **parameter_memory(task, cfg)}


def markdown(report: dict[str, Any]) -> str:
    lines = [f"Device: {report['device']}; bf16 matmul peak: {report['matmul_peak_tflops']} TFLOP/s; "
             f"{report['steps']} timed steps per preset.", ""]
    head = ["preset", "batch", "samples/s", "step ms", "peak GiB", "weights+grads+Adam GiB", "TFLOP/step", "MFU",
            *(f"{k} ms" for k in report["results"][0].get("breakdown_ms", {}))]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report["results"]:
        row = [r["preset"], r.get("batch"), r.get("samples_per_s"), r.get("step_ms"), r.get("peak_GiB"),
               r["weights_grads_adam_GiB"], r.get("tflop_per_step"), r.get("mfu"), *r.get("breakdown_ms", {}).values()]
        lines.append("| " + " | ".join("–" if v is None else str(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/results/gpu_train", help="folder for gpu_train.json / .md")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per preset (default 8)")
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--smoke", action="store_true", help="CPU, tiny widths: exercise the script, no GPU numbers")
    mode.add_argument("--estimate", action="store_true", help="CPU: parameter/gradient/optimiser memory only")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.estimate:
        report = {"device": "none (meta device: counts only)", "results": [estimate(p) for p in args.presets]}
        (out / "gpu_train_estimate.json").write_text(json.dumps(report, indent=2))
        print(json.dumps(report, indent=2))
        return report
    if not args.smoke and not torch.cuda.is_available():
        print("gpu_train: no CUDA device here; run it on a GPU machine (or --smoke / --estimate on CPU)", file=sys.stderr)
        raise SystemExit(2)
    device = torch.device("cpu" if args.smoke else "cuda")
    started = time.time()
    peak = None if args.smoke else matmul_peak_tflops(device)
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (smoke: tiny widths)",
        "matmul_peak_tflops": None if peak is None else round(peak, 1),
        "steps": args.steps,
        "results": [measure(p, device, args.steps, args.smoke, peak) for p in args.presets],
    }
    report["wall_s"] = round(time.time() - started, 1)
    (out / "gpu_train.json").write_text(json.dumps(report, indent=2))
    (out / "gpu_train.md").write_text(markdown(report))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
