"""Batches for the loop: a resumable, rank-sharded shuffle and a fast path for in-memory tensors."""

from __future__ import annotations

import itertools

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, Subset, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from .distributed import rank, world_size


class EpochSampler(DistributedSampler):
    """DistributedSampler that can start mid-epoch.

    The permutation of epoch e is drawn from seed + e by the sampler's own generator (so it does
    not depend on how much the model consumed of the global RNG), sharded over ranks and padded
    to equal length; `skip` drops the samples of the batches done before a preemption.
    """

    def __init__(self, dataset: Dataset, seed: int):
        super().__init__(dataset, num_replicas=world_size(), rank=rank(), shuffle=True,
                         seed=seed, drop_last=False)
        self.skip = 0

    def start(self, epoch: int, skip: int = 0) -> None:
        self.set_epoch(epoch)
        self.skip = skip

    def __iter__(self):
        return itertools.islice(super().__iter__(), self.skip, None)

    def __len__(self):
        return self.num_samples - self.skip


def shard(dataset: Dataset) -> Dataset:
    """This rank's share of an evaluation set: every world_size-th sample (no padding)."""
    r, w = rank(), world_size()
    if w == 1:
        return dataset
    if isinstance(dataset, TensorDataset):  # strided views: keeps make_loader's fast path
        return TensorDataset(*(t[r::w] for t in dataset.tensors))
    return Subset(dataset, range(r, len(dataset), w))


def make_loader(dataset: Dataset, sampler, batch_size: int, device: torch.device,
                num_workers: int = 0, generator: torch.Generator | None = None) -> DataLoader:
    tensors = isinstance(dataset, TensorDataset)
    on_device = tensors and dataset.tensors[0].is_cuda
    common = dict(num_workers=num_workers, generator=generator,
                  pin_memory=device.type == "cuda" and not on_device)
    if tensors:  # fast path: one fancy index per batch instead of per-sample __getitem__ + collate
        return DataLoader(dataset, sampler=BatchSampler(sampler, batch_size, drop_last=False),
                          batch_size=None, **common)
    return DataLoader(dataset, sampler=sampler, batch_size=batch_size, **common)


def to_device(batch, device: torch.device):
    """Move a tensor, or a (nested) tuple/list/dict of them, to `device`."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


def batch_len(batch) -> int:
    """Number of samples in a batch: the leading dimension of its first tensor."""
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    if isinstance(batch, dict):
        return batch_len(next(iter(batch.values())))
    return batch_len(batch[0])
