"""Training order that does not depend on the number of processes and can be resumed mid-epoch.

``EpochSampler`` draws one permutation per epoch from ``seed + epoch`` (as ``DistributedSampler``), cuts it to a
multiple of the number of processes and deals it out round-robin: with a per-process batch ``b`` on ``p``
processes, global batch ``k`` holds permutation entries ``k·b·p .. (k+1)·b·p - 1`` whatever ``p`` is, so one
process with batch ``b·p`` and ``p`` processes with batch ``b`` see the same samples in each optimiser step, and
no sample twice in an epoch. Lightning leaves it in place under DDP (it is a ``DistributedSampler``) and calls its
``set_epoch``.

``ResumableLoader`` is a ``DataLoader`` with Lightning's ``state_dict``/``load_state_dict`` protocol: the
checkpoint records (epoch, batches delivered this epoch), and a resumed run continues with the next batch of the
same permutation instead of starting the epoch over.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler


class EpochSampler(DistributedSampler):
    """Indices of one process for one epoch: a seeded permutation per epoch, dealt round-robin to the
    ``num_replicas`` processes; the first ``skip`` indices of this process are left out (resume)."""

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, seed: int = 0) -> None:
        # DistributedSampler.__init__ insists on an initialised process group when num_replicas is not given;
        # the trainer already knows both numbers, so they are set here directly.
        self.dataset = dataset
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.epoch = 0
        self.shuffle = True
        self.drop_last = True
        self.skip = 0
        self.total_size = len(dataset) - len(dataset) % num_replicas
        self.num_samples = self.total_size // num_replicas

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.dataset), generator=g)[: self.total_size]
        return iter(order[self.rank :: self.num_replicas][self.skip :].tolist())

    def __len__(self) -> int:
        return self.num_samples


class ResumableLoader(DataLoader):
    """The training ``DataLoader``: ``EpochSampler`` order, batches counted per epoch, resumable (see module)."""

    def __init__(
        self, dataset: Dataset, batch_size: int, *, seed: int, num_replicas: int = 1, rank: int = 0, **kwargs: Any
    ) -> None:
        sampler = EpochSampler(dataset, num_replicas, rank, seed)
        # the workers' base seed is drawn from this generator, re-seeded per epoch in __iter__
        super().__init__(dataset, batch_size=batch_size, sampler=sampler, generator=torch.Generator(), **kwargs)
        self.delivered = 0  # batches handed out in the current epoch (with the ones skipped on resume)
        self._resume: dict[str, int] | None = None

    def __iter__(self) -> Iterator[Any]:
        sampler = self.sampler
        assert isinstance(sampler, EpochSampler)
        # Lightning calls set_epoch after iter() and before the first batch: read the epoch lazily
        return self._batches(sampler)

    def _batches(self, sampler: EpochSampler) -> Iterator[Any]:
        resume, self._resume = self._resume, None
        skipped = resume["batches"] if resume is not None and resume["epoch"] == sampler.epoch else 0
        sampler.skip = skipped * self.batch_size
        self.delivered = skipped
        assert self.generator is not None
        self.generator.manual_seed(sampler.seed * 100_003 + sampler.epoch)
        for batch in DataLoader.__iter__(self):
            self.delivered += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """Position in the training order: the epoch and the batches delivered in it."""
        sampler = self.sampler
        assert isinstance(sampler, EpochSampler)
        return {"epoch": sampler.epoch, "batches": self.delivered}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Continue after ``state_dict['batches']`` batches when the next iteration is of the same epoch."""
        self._resume = {"epoch": int(state_dict["epoch"]), "batches": int(state_dict["batches"])}
        sampler = self.sampler
        assert isinstance(sampler, EpochSampler)
        sampler.set_epoch(self._resume["epoch"])


def training_loader(loader: DataLoader, seed: int, trainer: Any = None) -> ResumableLoader:
    """``loader``'s dataset, batch size and loading options in a ``ResumableLoader`` for this process of
    ``trainer`` (one process without a trainer)."""
    world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
    return ResumableLoader(
        loader.dataset,
        loader.batch_size,
        seed=seed,
        num_replicas=world,
        rank=rank,
        drop_last=loader.drop_last,
        num_workers=loader.num_workers,
        persistent_workers=loader.persistent_workers,
        collate_fn=loader.collate_fn,
        worker_init_fn=loader.worker_init_fn,
    )
