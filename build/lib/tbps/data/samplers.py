"""The P×K identity sampler (P identities, K pairs each per batch), correct under DDP.

IRRA's identity sampler has no distributed path (its DDP branch never builds a loader).
Here every global step draws ``P × world_size`` distinct identities and gives each rank its
own P of them, so ranks never share an identity within a step; the draw is seeded by
``seed + epoch``, so all ranks agree without talking, and epochs reshuffle.

It subclasses ``DistributedSampler`` only so that Lightning recognises it as already
distributed (it neither wraps it nor replaces it) and calls ``set_epoch`` every epoch.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence

import numpy as np
import torch.distributed as dist
from torch.utils.data import DistributedSampler


class IdentitySampler(DistributedSampler):
    def __init__(self, labels: Sequence[int], batch_size: int, num_instances: int = 4,
                 num_replicas: int | None = None, rank: int | None = None, seed: int = 0) -> None:
        # DistributedSampler.__init__ insists on an initialised process group; nothing
        # from it is needed beyond these attributes.
        if num_replicas is None:
            num_replicas = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if rank is None:
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        if batch_size % num_instances:
            raise ValueError(f"batch size {batch_size} is not a multiple of num_instances "
                             f"{num_instances} (K); choose P×K")
        self.num_replicas, self.rank, self.seed, self.epoch = num_replicas, rank, seed, 0
        self.shuffle, self.drop_last = True, True
        self.k, self.p = num_instances, batch_size // num_instances
        self.by_id: dict[int, list[int]] = defaultdict(list)
        for index, label in enumerate(labels):
            self.by_id[int(label)].append(index)
        if len(self.by_id) < self.p * num_replicas:
            raise ValueError(f"{len(self.by_id)} identities cannot fill {num_replicas} ranks × "
                             f"P={self.p} distinct identities per step; lower the batch size "
                             "or num_instances")
        self.num_steps = (sum(max(len(i), self.k) // self.k for i in self.by_id.values())
                          // (self.p * num_replicas))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _groups(self, rng: np.random.Generator) -> dict[int, list[list[int]]]:
        """Every identity's pairs, shuffled, in groups of K."""
        groups = {}
        for pid, idx in self.by_id.items():
            idx = rng.permutation(idx).tolist()
            if len(idx) < self.k:  # too few pairs: repeat some, as IRRA does
                idx += rng.choice(idx, self.k - len(idx)).tolist()
            groups[pid] = [idx[i:i + self.k] for i in range(0, len(idx) - self.k + 1, self.k)]
        return groups

    def _global_batches(self, epoch: int) -> list[list[list[int]]]:
        """Each global step: ``P × world`` groups of K indices, one identity per group. The
        number of steps is the same every epoch (all groups / groups per step); identities
        whose groups run out before the end are refilled with a fresh shuffle."""
        rng = np.random.default_rng((self.seed, epoch))
        groups = self._groups(rng)
        per_step = self.p * self.num_replicas
        steps = []
        while len(steps) < self.num_steps:
            alive = [pid for pid, g in groups.items() if g]
            if len(alive) < per_step:
                for pid, more in self._groups(rng).items():
                    groups[pid].extend(more)
                continue
            chosen = rng.choice(len(alive), per_step, replace=False)
            steps.append([groups[alive[c]].pop() for c in chosen])
        return steps

    def __iter__(self) -> Iterator[int]:
        for groups in self._global_batches(self.epoch):
            for group in groups[self.rank * self.p:(self.rank + 1) * self.p]:
                yield from group

    def __len__(self) -> int:
        return self.num_steps * self.p * self.k
