"""The LightningModule: mask losses with deep supervision (+ LM loss), exact metrics, per-slot optimiser groups,
cosine schedule with linear warm-up (the reference's recipe), and slim checkpoints.

Evaluation scores every sample twice: in the letterboxed frame (as the reference, comparable to its numbers) and,
with ``eval.native``, at the image's native resolution (logits cut out of the letterbox and resized bilinearly,
against the mask as stored). Under DDP the metrics and the per-sample rows are gathered from every process and a
sample repeated by the distributed sampler's padding counts once."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from framework.core.model import ModelOutput, SegEarthModel, upsample_logits
from framework.core.readout import chosen_targets
from framework.core.target import decide
from framework.core.weights import FROZEN_KEY, MODEL_PREFIX, restore_frozen, slim_state
from framework.data.augment import Geometry
from framework.data.transforms import box_mask
from framework.eval.answers import answer_scores
from framework.eval.image_blind import image_blind_see
from framework.eval.metrics import ReasoningSegMetrics, TargetMetrics
from framework.eval.postprocess import disjoint_masks, region_labels, unletterbox
from framework.eval.tta import averaged_output
from framework.train.losses import competition_loss, mask_loss, presence_loss
from framework.train.matching import instance_masks, target_loss
from framework.train.strategies import drop_gradients, guard_loss
from framework.train.weight_average import WeightAverage


class SegEarthTask(L.LightningModule):
    """Training, validation and test of a ``SegEarthModel`` built from a resolved experiment config."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        # kept in checkpoints; not logged: tracking logs the config as flat params (``model.encoder.name``, ...)
        self.save_hyperparameters({"config": config}, logger=False)
        self.config = config
        self.model = SegEarthModel(config["model"])
        self.model.check_image_size(config["data"]["image_size"])
        # "<stage>": in the letterboxed frame (reference-comparable); "<stage>_native": each image's own size
        self.metrics = nn.ModuleDict(
            {name: ReasoningSegMetrics() for name in ("val", "test", "val_native", "test_native")}
        )
        # an answer's targets (several per question), matched per ground-truth instance
        self.target_metrics = nn.ModuleDict({name: TargetMetrics() for name in ("val", "test")})
        # "test_shuffled": the shuffled-question control; "test_image_blind": visual tokens of another image
        self.test_prefix = "test"
        self.results: dict[str, dict] = {}
        self.overlay_predictions: dict[int, np.ndarray] = {}  # id -> bool [H0,W0], first ``eval.overlays`` ids
        self.val_overlays = 0  # first N val ids kept per validation (set by tracking.ValOverlays)
        self.val_overlay_predictions: dict[int, np.ndarray] = {}  # id -> bool [H0,W0], of every process
        self._rows: list[dict] = []
        self._kept: dict[int, np.ndarray] = {}
        self._overlay_ids: range = range(0)
        self.skipped_steps = 0  # optimiser steps left out for a non-finite loss (optim.on_nonfinite: skip)
        self.skip_update = False
        self.ema = WeightAverage(config["optim"]["ema_decay"]) if config["optim"]["ema_decay"] else None

    # ---------------------------------------------------------------- losses
    def _loss(
        self, out: ModelOutput, targets: torch.Tensor, point_sampled: bool, instances: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Loss terms and their weighted sum ``loss``: ``targets`` [B,S,S] the answer masks, ``instances`` [B,S,S]
        their instance ids for a read-out with target queries (None: each mask is one instance)."""
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
                pos_balance=lc["pos_balance"],
            )
            bce, dice = bce + b, dice + d
        terms = {"mask_bce": bce, "mask_dice": dice}
        loss = lc["bce_weight"] * bce + lc["dice_weight"] * dice
        if lc["presence_weight"]:
            terms["presence"] = presence_loss(out.mask_logits, targets)
            loss = loss + lc["presence_weight"] * terms["presence"]
        if lc["competition_weight"]:
            terms["competition"] = competition_loss(out.mask_logits, targets, out.image_index)
            loss = loss + lc["competition_weight"] * terms["competition"]
        own = dict(out.terms)  # the read-out's own terms, e.g. concept_query
        if out.target_logits is not None:
            ids = targets.to(torch.uint8) if instances is None else instances
            own.update(target_loss(out.target_logits, out.target_scores, ids))
        for name, term in own.items():
            terms[name] = term
            loss = loss + lc[f"{name}_weight"] * term
        if out.lm_loss is not None:
            terms["lm"] = out.lm_loss
            loss = loss + lc["lm_weight"] * out.lm_loss
        terms["loss"] = loss
        return terms

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        answers = batch["answer"] if self.config["loss"]["lm_weight"] > 0 else None
        out = self.model(batch["image"], batch["question"], batch["image_index"], answers, concepts=batch["concept"])
        terms = self._loss(out, batch["mask"], self.config["loss"]["point_sample"], batch["instances"])
        if self.model.target_decision is not None:  # the answers it is fitted to before each validation
            self.model.target_decision.observe(out.mask_logits, batch["mask"])
        bs = len(batch["question"])
        loss = guard_loss(self, terms["loss"], batch)  # stops, or skips the step, on a NaN/inf loss
        if self.skip_update:
            self.log("train/nonfinite_skipped", float(self.skipped_steps), batch_size=bs, on_step=True)
            return loss
        self.log_dict({f"train/{k}": v for k, v in terms.items()}, batch_size=bs, on_step=True, on_epoch=True)
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        drop_gradients(self, optimizer)  # a skipped step leaves parameters and optimiser state untouched

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        # here, not in on_train_batch_end: a step checkpoint (saved by a callback's on_train_batch_end) then holds
        # the average of this step too, so a resumed run continues it exactly
        if self.ema is not None:
            self.ema.update(self.trainer.global_step)

    def on_fit_start(self) -> None:
        if self.ema is not None:
            self.ema.start(self.model)

    def on_fit_end(self) -> None:
        if self.ema is not None:
            self.ema.copy_to_model()  # what fit leaves in memory is what its checkpoints hold

    # ---------------------------------------------------------------- evaluation
    @property
    def _native(self) -> bool:
        return bool(self.config["eval"]["native"])

    def _evaluate(self, batch: dict, stage: str) -> ModelOutput:
        """Model output for a batch; updates the letterboxed-frame metric of ``stage`` and, with ``eval.native``,
        the native-resolution one; keeps the native predictions of the samples wanted for overlays."""
        see = image_blind_see(self.model, batch["foreign_image"]) if "foreign_image" in batch else None
        out = averaged_output(
            self.model, batch["image"], batch["question"], batch["image_index"], self.config["eval"]["tta"], see
        )
        size = tuple(batch["image"].shape[-2:])
        threshold = self.config["eval"]["threshold"]
        # the answers decided "no target" are empty; ``out`` keeps the model's logits (the validation loss)
        ec = self.config["eval"]
        logits, probability = decide(self.model.target_decision, out.mask_logits, ec["target_threshold"])
        if probability is not None:
            out.notes["target_probability"] = [round(p, 4) for p in probability.tolist()]
        pred = upsample_logits(logits, size) > threshold
        self.metrics[stage].update(pred, batch["mask"], batch["id"], box_mask(batch["box"], size[0]))
        self._update_targets(out, pred, batch, stage)
        ids = batch["id"].tolist()
        wanted = self._overlay_ids if stage == "val" or self.test_prefix == "test" else range(0)
        rows = [k for k, i in enumerate(ids) if self._native or i in wanted]
        if not rows:
            return out
        targets = [batch["native_mask"][k] for k in rows]
        preds = unletterbox(logits[rows], batch["box"][rows], [tuple(t.shape) for t in targets], size[0], threshold)
        for k, p, t in zip(rows, preds, targets, strict=True):
            if self._native:
                self.metrics[f"{stage}_native"].update(p[None], t[None].to(p.device), batch["id"][k : k + 1])
            if ids[k] in wanted:
                self._kept[ids[k]] = p.cpu().numpy()
        return out

    def _update_targets(self, out: ModelOutput, answers: torch.Tensor, batch: dict, stage: str) -> None:
        """The per-target metric of ``stage``: each row's targets as ``predict`` gives them (``predict.targets``:
        the target queries chosen, or the connected regions of its answer mask ``answers`` [B,S,S] bool; within
        it, without overlaps) against its instances."""
        size = tuple(batch["image"].shape[-2:])
        threshold = self.config["eval"]["threshold"]
        queries = self.model.has_target_queries and self.config["predict"]["targets"] == "auto"
        chosen = chosen_targets(out.target_scores, answers.flatten(1).any(1)) if queries else None
        preds = []
        for row, answer in enumerate(answers):
            if chosen is not None:
                masks = list(upsample_logits(out.target_logits[row, chosen[row]], size) > threshold)
                kept = [own for _, own in disjoint_masks(masks, answer)]
            else:  # regions: disjoint and within the answer already
                labels, count = region_labels(answer.cpu().numpy())
                kept = [torch.from_numpy(labels == k).to(answer.device) for k in range(1, count + 1)]
            preds.append(torch.stack(kept) if kept else answer.new_zeros(0, *size))
        targets = [instance_masks(ids.to(answers.device)) for ids in batch["instances"]]
        self.target_metrics[stage].update(preds, targets, batch["id"])

    def _compute(self, stage: str) -> tuple[dict[str, float], dict[str, list]]:
        """(metrics, per-sample counts) of every process for ``stage``, native ones under ``native/``; resets."""
        metrics = [("", self.metrics[stage])] + ([("native/", self.metrics[f"{stage}_native"])] if self._native else [])
        values: dict[str, float] = {}
        samples: dict[str, list] = {}
        for prefix, metric in metrics:
            values.update({f"{prefix}{k}": v for k, v in metric.compute().items()})
            per_sample = metric.per_sample()
            if samples and per_sample["ids"] != samples["ids"]:
                raise RuntimeError("frame and native metrics saw different samples")
            samples["ids"] = per_sample["ids"]
            counts = ("iou", "inter", "union", "target_area", "pred_area")
            samples.update({f"{prefix}{k}": per_sample[k] for k in counts})
            metric.reset()
        targets = self.target_metrics[stage]
        if targets.update_count:
            values.update(targets.compute())
            per_target = targets.per_sample()
            if per_target["ids"] != samples["ids"]:
                raise RuntimeError("the mask and target metrics saw different samples")
            samples.update({k: v for k, v in per_target.items() if k != "ids"})
            targets.reset()
        return values, samples

    def _log_metrics(self, prefix: str, values: dict[str, float]) -> None:
        """Scores only (no counts, no floors: those are in the results files)."""
        counts = ("n", "n_empty", "n_targets")
        loggable = {k: v for k, v in values.items() if "floor" not in k and k.split("/")[-1] not in counts}
        # already gathered, so equal on every process: the max of equal values keeps them exact (a mean over 3
        # processes may not), and a synced value spares Lightning's "use sync_dist=True" warning under DDP
        self.log_dict({f"{prefix}/{k}": float(v) for k, v in loggable.items()}, sync_dist=True, reduce_fx="max")

    def _gather(self, obj: Any) -> list[Any]:
        """``obj`` of every process (a list of one outside DDP)."""
        if self.trainer.world_size == 1:
            return [obj]
        gathered: list[Any] = [None] * self.trainer.world_size
        torch.distributed.all_gather_object(gathered, obj)
        return gathered

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        out = self._evaluate(batch, "val")
        terms = self._loss(out, batch["mask"], False, batch["instances"])  # full masks: a deterministic val loss
        self.log("val/loss", terms["loss"], batch_size=len(batch["question"]), on_epoch=True, sync_dist=True)

    def _fit_target_decision(self) -> None:
        """Fit the target decision to the training answers every process remembers (the same fit everywhere)."""
        decision = self.model.target_decision
        if decision is None or self.trainer.sanity_checking:
            return
        parts = self._gather([t.cpu() for t in decision.memory()])
        fitted = decision.fit(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
        if not fitted and int(decision.seen):
            rank_zero_warn("target decision not fitted: the training answers so far hold only one class")

    def on_validation_epoch_start(self) -> None:
        self._fit_target_decision()
        if self.ema is not None and self.ema.started:
            self.ema.swap()  # validate the average; on_validation_epoch_end swaps back
        self._kept = {}
        self._overlay_ids = range(self.val_overlays)

    def on_validation_epoch_end(self) -> None:
        if self.val_overlays:
            self.val_overlay_predictions = {i: m for part in self._gather(self._kept) for i, m in part.items()}
        values, _ = self._compute("val")
        self.results["val"] = values
        self._log_metrics("val", values)
        if self.ema is not None and self.ema.started:
            self.ema.swap()

    def test_step(self, batch: dict, batch_idx: int) -> None:
        out = self._evaluate(batch, "test")
        rows = []
        for i in range(len(batch["question"])):
            row = {
                "id": int(batch["id"][i]),
                "stem": batch["stem"][i],
                "concept": batch["concept"][i],
                "question": batch["question"][i],
            }
            # notes on each question: the read-out's (concept_choice: the concept that answered, in the first view)
            # and the target decision's probability
            row.update({name: values[i] for name, values in out.notes.items()})
            rows.append(row)
        tokens = self.config["predict"]["answer_tokens"]
        answering = self.test_prefix in ("test", "test_image_blind")  # the shuffled control's references moved too
        if answering and tokens and self.model.why_no_answer_text(self.config) is None:
            if "foreign_image" in batch:  # the image-blind control: another image's visual tokens
                seen = image_blind_see(self.model, batch["foreign_image"])(batch["image"], Geometry())
            else:
                seen = self.model.see(batch["image"])
            said = self.model.answer_texts(seen, batch["question"], batch["image_index"], tokens)
            for row, text, reference in zip(rows, said, batch["answer"], strict=True):
                row["answer"], row["reference_answer"] = text, reference
        self._rows.extend(rows)

    def on_test_epoch_start(self) -> None:
        self._rows = []
        self._kept = {}
        self._overlay_ids = range(self.config["eval"]["overlays"])

    def on_test_epoch_end(self) -> None:
        values, samples = self._compute("test")
        rows = {r["id"]: r for part in self._gather(self._rows) for r in part}
        said = [r for r in rows.values() if "answer" in r]
        values.update(answer_scores([r["answer"] for r in said], [r["reference_answer"] for r in said]))
        per_sample = [
            {**rows[i], **{k: v[n] for k, v in samples.items() if k != "ids"}} for n, i in enumerate(samples["ids"])
        ]
        self.results[self.test_prefix] = {"metrics": values, "samples": per_sample}
        if self.test_prefix == "test":
            self.overlay_predictions = {i: m for part in self._gather(self._kept) for i, m in part.items()}
        self._log_metrics(self.test_prefix, values)

    # ---------------------------------------------------------------- optimisation
    def configure_optimizers(self) -> dict:
        oc = self.config["optim"]  # slot_lr_scale names only slots: checked when the config was loaded
        groups = []
        for slot, module in self.model.slots().items():
            params = [p for p in module.parameters() if p.requires_grad]
            if params:
                groups.append({"params": params, "lr": oc["lr"] * oc["slot_lr_scale"].get(slot, 1.0), "name": slot})
        for name in ("readout", "target_decision"):
            module = getattr(self.model, name)
            params = [p for p in module.parameters() if p.requires_grad] if module is not None else []
            if params:
                groups.append({"params": params, "lr": oc["lr"], "name": name})
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
        """Frozen slots are rebuilt from their config, so their tensors are left out (``framework.core.weights``)."""
        checkpoint[FROZEN_KEY] = slim_state(self.model, checkpoint["state_dict"])
        if self.ema is not None and self.ema.started:
            # state_dict: the average (what test, predict and export load); the training weights kept to resume
            checkpoint["ema_training_weights"] = self.ema.exchange(checkpoint["state_dict"], prefix=MODEL_PREFIX)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        restore_frozen(self.model, checkpoint["state_dict"], checkpoint.get(FROZEN_KEY, {}))
        if self.ema is not None:
            # resuming fit: on_fit_start takes these as the weights to train on, the loaded ones as the average
            self.ema.resume_from(checkpoint.get("ema_training_weights"))
