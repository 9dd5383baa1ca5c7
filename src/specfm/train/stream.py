"""Training batches streamed from Parquet files through a shuffle buffer (no full-table load).

The stars stage trains on up to 220 million rows: the table never fits in memory, so `fit` can
take a `ParquetBatchStream` instead of a map-style Dataset. The order of epoch e is a function of
(seed, e) only: row groups are visited in a seeded permutation, their rows pass a seeded shuffle
buffer, and a resumed run regenerates the same stream and skips the batches already done, so
resume stays exact. Under DDP each rank reads every world_size-th row group and all ranks stop
at the same (smallest) step count.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from .distributed import rank, world_size


class ParquetBatchStream:
    """Batches of rows (row filter applied) from Parquet files, shuffled through a buffer.

    ``to_arrays(table) -> tuple of numpy arrays`` turns the rows of one row group into arrays
    (done once per row group; the shuffling then moves numpy rows, not Arrow tables);
    batches are tuples of tensors sharing that layout.
    ``where``: (column, value) keeping rows with column == value (e.g. ("split", "train")).
    ``buffer_rows``: rows held for shuffling; memory is about buffer_rows x row size.
    """

    def __init__(self, paths: Sequence[str | Path], to_arrays: Callable, *, columns: list[str],
                 where: tuple[str, str] | None = None, buffer_rows: int = 65536, seed: int = 0):
        self.paths = [Path(p) for p in paths]
        self.to_arrays, self.columns, self.where = to_arrays, list(columns), where
        self.buffer_rows, self.seed = int(buffer_rows), int(seed)
        # (file index, row group, kept rows): counting reads only the filter column.
        self.units = []
        for i, path in enumerate(self.paths):
            pf = pq.ParquetFile(path)
            for g in range(pf.num_row_groups):
                if where is None:
                    n = pf.metadata.row_group(g).num_rows
                else:
                    col = pf.read_row_group(g, columns=[where[0]]).column(0)
                    n = int(pc.sum(pc.equal(col, where[1])).as_py() or 0)
                if n:
                    self.units.append((i, g, n))
        if not self.units:
            raise ValueError(f"no rows with {where} in {[str(p) for p in self.paths]}")

    def _rank_units(self, r: int) -> list[tuple[int, int, int]]:
        return self.units[r::world_size()]

    def __len__(self) -> int:
        """Rows this rank sees per epoch."""
        return sum(n for *_, n in self._rank_units(rank()))

    def steps_per_epoch(self, batch_size: int) -> int:
        """Optimizer steps per epoch, the same on every rank (the smallest rank's count)."""
        return min(math.ceil(sum(n for *_, n in self._rank_units(r)) / batch_size)
                   for r in range(world_size()))

    def _read(self, unit) -> tuple[np.ndarray, ...]:
        i, g, _ = unit
        table = pq.ParquetFile(self.paths[i]).read_row_group(g, columns=self.columns)
        if self.where is not None:
            table = table.filter(pc.equal(table[self.where[0]], self.where[1]))
        return tuple(self.to_arrays(table))

    def batches(self, epoch: int, batch_size: int, skip: int = 0) -> Iterator[tuple]:
        """The batches of `epoch`, after skipping the first `skip` (for resume)."""
        rng = np.random.default_rng([self.seed, epoch, rank()])
        units = self._rank_units(rank())
        order = rng.permutation(len(units))
        buffer, done = None, 0

        def emit(arrays, keep: int):
            """Shuffle the buffer, yield full batches of all but `keep` rows; return (tail, kept)."""
            nonlocal done
            perm = rng.permutation(len(arrays[0]))
            out = tuple(a[perm[keep:]] for a in arrays)
            rest = tuple(a[perm[:keep]] for a in arrays)
            n_full = len(out[0]) // batch_size
            for b in range(n_full):
                if done >= skip:
                    yield tuple(torch.from_numpy(a[b * batch_size:(b + 1) * batch_size]) for a in out)
                done += 1
            return tuple(a[n_full * batch_size:] for a in out), rest

        for k in order:
            arrays = self._read(units[k])
            buffer = arrays if buffer is None else tuple(np.concatenate(p) for p in zip(buffer, arrays))
            if len(buffer[0]) >= self.buffer_rows:
                tail, rest = yield from emit(buffer, self.buffer_rows // 2)
                buffer = tuple(np.concatenate(p) for p in zip(tail, rest))
        if buffer is not None and len(buffer[0]):
            tail, _ = yield from emit(buffer, 0)
            if len(tail[0]) and done >= skip:
                yield tuple(torch.from_numpy(a) for a in tail)


def arrays_from_columns(groups: Sequence[Sequence[str]]) -> Callable:
    """A to_arrays for ParquetBatchStream: one float32 (rows, len(group)) array per column group."""

    def convert(table):
        return tuple(np.stack([table.column(c).to_numpy(zero_copy_only=False) for c in cols],
                              axis=1).astype(np.float32) for cols in groups)

    return convert
