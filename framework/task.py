"""The LightningModule: mask losses with deep supervision (+ LM loss), exact metrics, per-slot optimiser groups,
cosine schedule with linear warm-up (the reference's recipe), and slim checkpoints."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from torch import nn

from framework.data.transforms import box_mask
from framework.losses import mask_loss
from framework.metrics import ReasoningSegMetrics
from framework.model import ModelOutput, SegEarthModel, upsample_logits


def _fingerprint(module: nn.Module) -> list[float]:
    """Cheap identity of a module's weights: per-tensor sums, to check that a rebuilt frozen slot is the same."""
    return [float(t.detach().double().sum()) for t in module.state_dict().values() if t.is_floating_point()]


class SegEarthTask(L.LightningModule):
    """Training, validation and test of a ``SegEarthModel`` built from a resolved experiment config."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.save_hyperparameters({"config": config})
        self.config = config
        self.model = SegEarthModel(config["model"])
        self.metrics = nn.ModuleDict({"val": ReasoningSegMetrics(), "test": ReasoningSegMetrics()})
        self.test_prefix = "test"  # "test_shuffled" for the shuffled-question control
        self.results: dict[str, dict] = {}
        self._rows: list[dict] = []

    # ---------------------------------------------------------------- losses
    def _loss(self, out: ModelOutput, targets: torch.Tensor, point_sampled: bool) -> dict[str, torch.Tensor]:
        lc = self.config["loss"]
        predictions = [out.mask_logits] + (out.aux_logits if lc["deep_supervision"] else [])
        bce = dice = 0.0
        for logits in predictions:
            b, d = mask_loss(
                logits,
                targets,
                point_sampled=point_sampled,
                num_points=lc["num_points"],
                oversample_ratio=lc["oversample_ratio"],
                importance_ratio=lc["importance_sample_ratio"],
            )
            bce, dice = bce + b, dice + d
        terms = {"mask_bce": bce, "mask_dice": dice}
        loss = lc["bce_weight"] * bce + lc["dice_weight"] * dice
        if out.lm_loss is not None:
            terms["lm"] = out.lm_loss
            loss = loss + lc["lm_weight"] * out.lm_loss
        terms["loss"] = loss
        return terms

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        answers = batch["answer"] if self.config["loss"]["lm_weight"] > 0 else None
        out = self.model(batch["image"], batch["question"], answers)
        terms = self._loss(out, batch["mask"], point_sampled=self.config["loss"]["point_sample"])
        bs = batch["image"].shape[0]
        self.log_dict({f"train/{k}": v for k, v in terms.items()}, batch_size=bs, on_step=True, on_epoch=True)
        return terms["loss"]

    # ---------------------------------------------------------------- evaluation
    def _evaluate(self, batch: dict, metric: ReasoningSegMetrics) -> ModelOutput:
        out = self.model(batch["image"], batch["question"])
        size = tuple(batch["image"].shape[-2:])
        pred = upsample_logits(out.mask_logits, size) > self.config["eval"]["threshold"]
        metric.update(pred, batch["mask"], batch["id"], box_mask(batch["box"], size[0]))
        return out

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        out = self._evaluate(batch, self.metrics["val"])
        terms = self._loss(out, batch["mask"], point_sampled=False)  # full-mask: deterministic val loss
        self.log("val/loss", terms["loss"], batch_size=batch["image"].shape[0], on_epoch=True, sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        values = self.metrics["val"].compute()
        self.metrics["val"].reset()
        self.results["val"] = values
        self.log_dict(
            {f"val/{k}": float(v) for k, v in values.items() if not k.startswith("floor") and k != "n"},
            sync_dist=False,
        )

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, self.metrics["test"])
        for i in range(len(batch["question"])):
            self._rows.append(
                {
                    "id": int(batch["id"][i]),
                    "stem": batch["stem"][i],
                    "concept": batch["concept"][i],
                    "question": batch["question"][i],
                }
            )

    def on_test_epoch_start(self) -> None:
        self._rows = []

    def on_test_epoch_end(self) -> None:
        metric = self.metrics["test"]
        values = metric.compute()
        samples = metric.per_sample()
        metric.reset()
        rows = {r["id"]: r for r in self._rows}
        per_sample = [
            {**rows[i], "iou": iou, "inter": inter, "union": union}
            for i, iou, inter, union in zip(samples["ids"], samples["iou"], samples["inter"], samples["union"])
            if i in rows
        ]
        self.results[self.test_prefix] = {"metrics": values, "samples": per_sample}
        self.log_dict(
            {f"{self.test_prefix}/{k}": float(v) for k, v in values.items() if k != "n"}, sync_dist=False
        )

    # ---------------------------------------------------------------- optimisation
    def configure_optimizers(self) -> dict:
        oc = self.config["optim"]
        unknown = set(oc["slot_lr_scale"]) - {"encoder", "compressor", "llm", "projector", "mask_head"}
        if unknown:
            from framework.errors import ConfigError

            raise ConfigError(f"optim.slot_lr_scale: unknown slot(s) {sorted(unknown)}")
        groups = []
        for slot, module in self.model.slots().items():
            params = [p for p in module.parameters() if p.requires_grad]
            if params:
                groups.append({"params": params, "lr": oc["lr"] * oc["slot_lr_scale"].get(slot, 1.0), "name": slot})
        optimizer = torch.optim.AdamW(groups, lr=oc["lr"], betas=tuple(oc["betas"]), weight_decay=oc["weight_decay"])
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(oc["warmup_ratio"] * total)
        floor = oc["min_lr_ratio"]

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---------------------------------------------------------------- slim checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Frozen slots are rebuilt from their config (same seed, same weights files), so their tensors are left
        out of the checkpoint (the frozen SmolLM2 alone would be 0.5 GB); a fingerprint checks them on load."""
        state = checkpoint["state_dict"]
        checkpoint["frozen_slots"] = {}
        for slot in self.model.frozen_slots:
            prefix = f"model.{slot}."
            for key in [k for k in state if k.startswith(prefix)]:
                del state[key]
            checkpoint["frozen_slots"][slot] = _fingerprint(getattr(self.model, slot))

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint["state_dict"]
        for slot, expected in checkpoint.get("frozen_slots", {}).items():
            module = getattr(self.model, slot)
            if not torch.allclose(torch.tensor(_fingerprint(module)), torch.tensor(expected), rtol=1e-5, atol=1e-3):
                raise RuntimeError(
                    f"frozen slot '{slot}' rebuilt from the config differs from the one trained with "
                    "(different weights file or seed?)"
                )
            for key, value in module.state_dict().items():
                state[f"model.{slot}.{key}"] = value
