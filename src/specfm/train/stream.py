"""Training batches streamed from Parquet files through a shuffle buffer (no full-table load).

The stars stage trains on up to 220 million rows: the table never fits in memory, so `fit` can
take a `ParquetBatchStream` instead of a map-style Dataset.

* Order. Epoch e visits the (file, row group) units in a permutation drawn from (seed, e), the
  same on every rank; the rows of that sequence are cut into one contiguous share per DDP rank
  (shares differ by at most one row, so every row is trained on exactly once per epoch and all
  ranks take the same number of steps); each rank passes its share through a shuffle buffer
  seeded by (seed, e, rank). A resumed run regenerates the same sequence and skips the batches
  already done, so resume is exact.
* Decoding. Reading and decoding a row group (Parquet pages -> Arrow -> numpy) is the expensive
  part, and it parallelises: with ``workers`` > 0, DataLoader worker processes decode the rank's
  pieces (piece k by worker k % workers) and hand them back in order, while the shuffle buffer
  stays in the main process. The batches are therefore identical for any number of workers
  (0 = decode in-process): `workers` is a speed setting, not part of the run's identity, and a
  job requeued with another worker count still resumes bit-identically.
* A row group is decoded once per epoch, except where a share boundary falls inside it: those
  (at most world_size - 1 per epoch) are decoded by both neighbouring ranks, each keeping its rows.
* On a GPU, batches are gathered straight into pinned host memory (``pin_memory``) so that the
  loop's ``.to(device, non_blocking=True)`` is an asynchronous copy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .distributed import rank, world_size

Piece = tuple[int, int, int]  # (unit index, first kept row, end kept row) of one row group


class ParquetBatchStream:
    """Batches of rows (row filter applied) from Parquet files, shuffled through a buffer.

    ``to_arrays(table) -> tuple of numpy arrays`` turns the rows of one row group into arrays
    (done once per piece, in the decoding process; it must pickle for spawned workers: see
    `arrays_from_columns`); batches are tuples of tensors sharing that layout.
    ``where``: (column, value) keeping rows with column == value (e.g. ("split", "train")).
    ``buffer_rows``: rows held for shuffling; memory is about buffer_rows x row size, plus the
    pieces in flight from the workers (2 x workers row groups).
    ``workers``: DataLoader processes decoding row groups (0: in this process).
    """

    def __init__(self, paths: Sequence[str | Path], to_arrays: Callable, *, columns: list[str],
                 where: tuple[str, str] | None = None, buffer_rows: int = 65536, seed: int = 0,
                 workers: int = 0):
        self.paths = [Path(p) for p in paths]
        self.to_arrays, self.columns, self.where = to_arrays, list(columns), where
        self.buffer_rows, self.seed, self.workers = int(buffer_rows), int(seed), int(workers)
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
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
        self.n_rows = sum(n for *_, n in self.units)

    # -- the epoch's plan: shares, step counts, pieces ---------------------------------------

    def share(self, r: int, w: int) -> tuple[int, int]:
        """Rank r's rows [start, stop) of the epoch's unit sequence (sizes differ by <= 1)."""
        base, extra = divmod(self.n_rows, w)
        start = r * base + min(r, extra)
        return start, start + base + (r < extra)

    def __len__(self) -> int:
        """Rows this rank sees per epoch."""
        start, stop = self.share(rank(), world_size())
        return stop - start

    def steps_per_epoch(self, batch_size: int, world: int | None = None) -> int:
        """Optimizer steps per epoch, the same on every rank.

        Every batch has batch_size rows except each rank's last one, which takes the rest of
        the share: between 1 and batch_size rows, or batch_size + 1 when the final round has
        fewer rows than there are ranks (those are folded into the round before).
        """
        w = world_size() if world is None else world
        if self.n_rows < w:
            raise ValueError(f"{self.n_rows} training rows cannot be shared by {w} ranks")
        full, rest = divmod(self.n_rows, w * batch_size)
        return full + 1 if rest >= w else full

    def pieces(self, epoch: int, r: int, w: int) -> list[Piece]:
        """The row-group slices rank r reads in `epoch`, in order."""
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.units))
        lo, hi = self.share(r, w)
        out, pos = [], 0
        for k in order:
            n = self.units[k][2]
            a, b = max(lo, pos), min(hi, pos + n)
            if a < b:
                out.append((int(k), a - pos, b - pos))
            pos += n
            if pos >= hi:
                break
        return out

    # -- decoding -------------------------------------------------------------------------

    def read(self, piece: Piece) -> tuple[np.ndarray, ...]:
        """Decode one piece: its row group, filtered, sliced, converted by to_arrays."""
        k, start, stop = piece
        i, g, _ = self.units[k]
        table = pq.ParquetFile(self.paths[i]).read_row_group(g, columns=self.columns)
        if self.where is not None:
            table = table.filter(pc.equal(table[self.where[0]], self.where[1]))
        return tuple(self.to_arrays(table.slice(start, stop - start)))

    def decoded(self, pieces: list[Piece]) -> Iterator[tuple[np.ndarray, ...]]:
        """The pieces' arrays in order, decoded in-process or by `workers` DataLoader workers."""
        if self.workers == 0 or not pieces:
            return map(self.read, pieces)
        # generator=: the loader draws its base seed from it, not from the global RNG (which
        # the checkpoint restores: drawing from it would make a resumed run diverge).
        loader = DataLoader(_Decoder(self, pieces), batch_size=None,
                            num_workers=min(self.workers, len(pieces)),
                            generator=torch.Generator().manual_seed(0))
        return (tuple(t.numpy() for t in arrays) for arrays in loader)

    # -- batches --------------------------------------------------------------------------

    def batches(self, epoch: int, batch_size: int, skip: int = 0, *, pin_memory: bool = False,
                rank_world: tuple[int, int] | None = None) -> Iterator[tuple]:
        """The batches of `epoch` for this rank, after skipping the first `skip` (for resume).

        rank_world: (rank, world size) instead of the process group's (tests, benchmarks).
        """
        r, w = (rank(), world_size()) if rank_world is None else rank_world
        n_steps = self.steps_per_epoch(batch_size, w)
        start, stop = self.share(r, w)
        last = (stop - start) - (n_steps - 1) * batch_size  # rows of the rank's final batch
        rng = np.random.default_rng([self.seed, epoch, r])
        keep = self.buffer_rows // 2
        pending, held, done = [], 0, 0

        def emit(buf, idx):
            nonlocal done
            if done >= skip:
                yield _gather(buf, idx, pin_memory)
            done += 1

        for arrays in self.decoded(self.pieces(epoch, r, w)):
            pending.append(arrays)
            held += len(arrays[0])
            if held < self.buffer_rows:
                continue
            buf, perm = _concat(pending), rng.permutation(held)
            n_out = min((held - keep) // batch_size, n_steps - 1 - done)  # never the final batch
            for b in range(n_out):
                yield from emit(buf, perm[keep + b * batch_size:keep + (b + 1) * batch_size])
            rest = np.concatenate([perm[:keep], perm[keep + n_out * batch_size:]])
            pending, held = [tuple(a[rest] for a in buf)], len(rest)
        assert held == (n_steps - 1 - done) * batch_size + last, "stream plan and rows disagree"
        buf, perm = _concat(pending), rng.permutation(held)
        pos = 0
        while done < n_steps:
            size = batch_size if done < n_steps - 1 else last
            yield from emit(buf, perm[pos:pos + size])
            pos += size


class _Decoder(IterableDataset):
    """A DataLoader worker's share of the pieces: every num_workers-th, starting at its id.

    The loader asks workers in turn and returns results in that order, so the main process
    receives the pieces in plan order.
    """

    def __init__(self, stream: ParquetBatchStream, pieces: list[Piece]):
        self.stream, self.pieces = stream, pieces

    def __iter__(self):
        info = get_worker_info()
        j, n = (info.id, info.num_workers) if info is not None else (0, 1)
        for piece in self.pieces[j::n]:
            yield self.stream.read(piece)


def _concat(parts: list[tuple[np.ndarray, ...]]) -> tuple[np.ndarray, ...]:
    return parts[0] if len(parts) == 1 else tuple(np.concatenate(p) for p in zip(*parts))


def _gather(buf: tuple[np.ndarray, ...], idx: np.ndarray, pin: bool) -> tuple[torch.Tensor, ...]:
    """Rows `idx` of each array as tensors; into pinned memory directly when `pin`."""
    if not pin:
        return tuple(torch.from_numpy(a[idx]) for a in buf)
    out = []
    for a in buf:
        t = torch.empty((len(idx), *a.shape[1:]), dtype=torch.from_numpy(a[:0]).dtype,
                        pin_memory=True)
        np.take(a, idx, axis=0, out=t.numpy())
        out.append(t)
    return tuple(out)


class arrays_from_columns:  # noqa: N801 (a function in use; a class so that workers can pickle it)
    """A to_arrays for ParquetBatchStream: one float32 (rows, len(group)) array per column group."""

    def __init__(self, groups: Sequence[Sequence[str]]):
        self.groups = [list(g) for g in groups]

    def __call__(self, table) -> tuple[np.ndarray, ...]:
        return tuple(np.stack([table.column(c).to_numpy(zero_copy_only=False) for c in cols],
                              axis=1).astype(np.float32) for cols in self.groups)
