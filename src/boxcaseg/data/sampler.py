"""Fixed-ratio mixed batches of box-supervised and salient samples (paper Sec. 4.2.3, Tab. 5).

Every batch holds exactly ``box_per_batch`` box samples followed by
``batch_size - box_per_batch`` salient samples (``r_ws = 9:7`` by default). An *epoch* is one
pass through the salient set: each salient index appears exactly once per epoch, in an order
reshuffled every epoch. Box samples are drawn without replacement from a permutation of all box
samples; when it runs out the next (reshuffled) permutation starts, and this stream continues
across epochs, so on COCO only part of the box set is seen per epoch, as in the paper.

The whole schedule is a pure function of ``(seed, epoch, batch index)``: any position can be
recomputed, which makes resuming exact and independent of DataLoader workers. Each yielded item
is a :class:`SampleRef` ``(source, index, seed)`` where ``seed`` drives that sample's random
augmentation (it depends on the sample's position in the global stream only).

Distributed: the *global* batch of ``batch_size * world_size`` samples is split by rank, so
ranks see disjoint samples and the union over ranks is the same for any split. The last
incomplete global batch of an epoch is dropped (a partial batch would break the fixed ratio).
If ``batch_size == box_per_batch`` (no salient samples) an epoch is one pass through the box set.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np

BOX = "box"
SALIENT = "salient"

# Distinct stream tags for the seed sequences.
_TAG_SALIENT_PERM, _TAG_BOX_PERM, _TAG_SALIENT_SAMPLE, _TAG_BOX_SAMPLE = 1, 2, 3, 4


class SampleRef(NamedTuple):
    """One sample of a batch: which set, which index in it, and its augmentation seed."""

    source: str  # "box" or "salient"
    index: int
    seed: int


def _seed_of(*words: int) -> int:
    return int(np.random.SeedSequence([int(w) for w in words]).generate_state(1, np.uint64)[0]
               >> np.uint64(1))


class MixedBatchSampler:
    """Batch sampler for ``torch.utils.data.DataLoader(batch_sampler=...)``.

    ``len(sampler)`` is the number of batches per epoch per rank. Iterating yields the rest of
    the current epoch (from :meth:`state_dict` position) and then moves to the next epoch, so
    ``for batch in loader`` runs one epoch, as with any sampler.
    """

    def __init__(self, n_box: int, n_salient: int, batch_size: int = 16, box_per_batch: int = 9,
                 seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if not 0 <= box_per_batch <= batch_size or batch_size < 1:
            raise ValueError(f"need 0 <= box_per_batch ({box_per_batch}) <= batch_size ({batch_size})")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.n_box, self.n_salient = int(n_box), int(n_salient)
        self.batch_size, self.box_per_batch = int(batch_size), int(box_per_batch)
        self.sal_per_batch = self.batch_size - self.box_per_batch
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        if self.box_per_batch and self.n_box == 0:
            raise ValueError("box_per_batch > 0 but the box-supervised set is empty")
        if self.sal_per_batch and self.n_salient == 0:
            raise ValueError("salient samples requested per batch but the salient set is empty")
        self._batches = self._batches_per_epoch()
        if self._batches == 0:
            raise ValueError(
                f"an epoch has no complete batch: {self.n_salient} salient samples < "
                f"{self.sal_per_batch * self.world_size} per global batch")
        self._cache: dict[tuple[int, int], np.ndarray] = {}
        self.epoch = 0
        self.batch = 0  # next batch (within the epoch) to yield

    # ------------------------------------------------------------------ schedule
    def _batches_per_epoch(self) -> int:
        if self.sal_per_batch:
            return self.n_salient // (self.sal_per_batch * self.world_size)
        return self.n_box // (self.box_per_batch * self.world_size)

    def __len__(self) -> int:
        return self._batches

    def _perm(self, tag: int, n: int, which: int) -> np.ndarray:
        # Permutations are recomputed on demand from their seed (pure), but cached because
        # consecutive batches use the same one (COCO: 860k box samples).
        key = (tag, which)
        if key not in self._cache:
            if len(self._cache) >= 4:
                self._cache.pop(next(iter(self._cache)))
            rng = np.random.default_rng(_seed_of(self.seed, tag, which))
            self._cache[key] = rng.permutation(n)
        return self._cache[key]

    def _salient_perm(self, epoch: int) -> np.ndarray:
        return self._perm(_TAG_SALIENT_PERM, self.n_salient, epoch)

    def _box_perm(self, cycle: int) -> np.ndarray:
        return self._perm(_TAG_BOX_PERM, self.n_box, cycle)

    def batch_refs(self, epoch: int, batch: int) -> list[SampleRef]:
        """This rank's samples of global batch ``batch`` of ``epoch`` (box ones first)."""
        if not 0 <= batch < self._batches:
            raise IndexError(f"batch {batch} outside epoch of {self._batches}")
        g_box = self.box_per_batch * self.world_size
        g_sal = self.sal_per_batch * self.world_size
        refs: list[SampleRef] = []
        # Position of this rank's first box sample in the endless box stream.
        start = ((epoch * self._batches + batch) * g_box) + self.rank * self.box_per_batch
        for k in range(start, start + self.box_per_batch):
            cycle, off = divmod(k, self.n_box)
            refs.append(SampleRef(BOX, int(self._box_perm(cycle)[off]),
                                  _seed_of(self.seed, _TAG_BOX_SAMPLE, k)))
        if self.sal_per_batch:
            perm = self._salient_perm(epoch)
            s0 = batch * g_sal + self.rank * self.sal_per_batch
            for pos in range(s0, s0 + self.sal_per_batch):
                refs.append(SampleRef(SALIENT, int(perm[pos]),
                                      _seed_of(self.seed, _TAG_SALIENT_SAMPLE, epoch, pos)))
        return refs

    def __iter__(self) -> Iterator[list[SampleRef]]:
        while self.batch < self._batches:
            refs = self.batch_refs(self.epoch, self.batch)
            self.batch += 1
            yield refs
        self.epoch += 1
        self.batch = 0

    # ------------------------------------------------------------------ resume
    def state_for_step(self, step: int) -> dict[str, Any]:
        """The state after ``step`` consumed batches from the start (for checkpoints).

        DataLoader workers pull batches ahead of the training loop, so the live iterator
        position runs ahead of the optimizer; checkpoints use the consumed step count instead.
        """
        epoch, batch = divmod(int(step), self._batches)
        return {**self._identity(), "epoch": epoch, "batch": batch}

    def _identity(self) -> dict[str, int]:
        return {"seed": self.seed, "n_box": self.n_box, "n_salient": self.n_salient,
                "batch_size": self.batch_size, "box_per_batch": self.box_per_batch,
                "world_size": self.world_size}

    def state_dict(self) -> dict[str, Any]:
        return {**self._identity(), "epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mine = self._identity()
        diff = {k: (state.get(k), v) for k, v in mine.items() if state.get(k) != v}
        if diff:
            raise ValueError("sampler state does not match this sampler (saved, now): "
                             + ", ".join(f"{k}={a!r}->{b!r}" for k, (a, b) in diff.items()))
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])
        if not 0 <= self.batch <= self._batches:
            raise ValueError(f"sampler state batch {self.batch} outside epoch of {self._batches}")
