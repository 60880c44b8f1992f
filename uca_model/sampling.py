"""Training batch samplers: plain random batches, or identity-balanced batches (P identities x K
samples) that put look-alike identities into the same batch.

**Why.** With plain random batches of 128 from tens of thousands of captions, a sample has almost no
other sample of its identity in the batch (the identity-aware positives are nearly diagonal) and
meets few of the identities it could be confused with. :class:`IdentityBatchSampler` builds every
global batch from P = B / K identities with K samples (captions, each with its image) each, and
draws the identities in groups of ``lookalike_group``: an anchor identity and its nearest
not-yet-drawn neighbours under a caption signature (below), so a batch holds identities that differ
in a few attributes, the negatives a retrieval model has to tell apart.

**Look-alikes without attribute labels.** An identity's signature is the set of attribute phrases
its captions mention (:func:`uca_model.text.attribute_spans`) and of each colour with the phrase
that follows it ("red" then "shirt" gives "red|shirt", so colours stay bound to garments); similarity is the
cosine of the binary signatures (the ``max_features`` most frequent features). This works on any of
the supported datasets, not only SynthPedes.

**Length and order.** An epoch is ``len(samples) // B`` global batches, as for random batches (the
same number of steps per epoch); identities are drawn from successive random permutations (an
identity is drawn again only after every identity has been drawn once). Within an identity the K
samples come from distinct images first, then distinct captions, then repeat. Everything is drawn
from a generator seeded by ``(seed, epoch)``; rank r of W takes the r-th slice of B / W of each
global batch, as :class:`uca_model.trainer.EpochBatchSampler` does.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Sequence

import numpy as np
import torch

from .text import ATTRIBUTE_VOCAB, attribute_spans

__all__ = ["caption_signatures", "lookalike_neighbours", "IdentityBatchSampler"]


_COLOURS = frozenset(ATTRIBUTE_VOCAB["colour"])


def _features(caption: str) -> list[str]:
    words = [caption[a:b].lower().replace("-", " ") for a, b in attribute_spans(caption)]
    return words + [f"{u}|{v}" for u, v in zip(words, words[1:]) if u in _COLOURS and v not in _COLOURS]


def caption_signatures(pids: Sequence[int], captions: Sequence[str], max_features: int = 2048) -> torch.Tensor:
    """[num_ids, F] float32 binary signature per identity (rows in increasing pid order, pids
    0..num_ids-1): which attribute phrases and phrase pairs its captions mention."""
    if len(pids) != len(captions):
        raise ValueError(f"{len(pids)} pids but {len(captions)} captions")
    per_id: dict[int, set[str]] = defaultdict(set)
    for pid, cap in zip(pids, captions):
        per_id[int(pid)].update(_features(cap))
    n = max(per_id) + 1 if per_id else 0
    counts = Counter(f for fs in per_id.values() for f in fs)
    vocab = {f: i for i, (f, _) in enumerate(counts.most_common(max_features))}
    sig = torch.zeros(n, max(1, len(vocab)))
    for pid, fs in per_id.items():
        idx = [vocab[f] for f in fs if f in vocab]
        if idx:
            sig[pid, idx] = 1.0
    return sig


def lookalike_neighbours(signatures: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    """[num_ids, k] long: each identity's k most similar other identities (cosine of the signatures,
    ties broken by index), most similar first. ``k`` is capped at num_ids - 1."""
    n = signatures.shape[0]
    k = max(0, min(k, n - 1))
    unit = torch.nn.functional.normalize(signatures.float(), dim=1)
    out = torch.empty(n, k, dtype=torch.long)
    for a in range(0, n, chunk):
        sim = unit[a:a + chunk] @ unit.T
        sim[torch.arange(sim.shape[0]), torch.arange(a, a + sim.shape[0])] = -float("inf")  # not itself
        out[a:a + chunk] = sim.topk(k, dim=1).indices if k else out[a:a + chunk]
    return out


class IdentityBatchSampler(torch.utils.data.Sampler):
    """Global batches of ``global_batch // samples_per_id`` identities x ``samples_per_id`` samples,
    identities drawn in look-alike groups (module docstring); rank r yields its slice of each.

    Args:
        pids: [n] identity (0..num_ids-1) of each training sample.
        image_ids: [n] image of each sample (K samples prefer distinct images).
        captions: [n] the captions (for the look-alike signatures).
        global_batch: B, a multiple of ``samples_per_id`` and of the world size.
        samples_per_id: K.
        lookalike_group: identities per look-alike group (1: identities drawn uniformly at random).
        seed: the run's seed; ctx: rank and world size (``uca_model.distributed.DistContext``).
    """

    def __init__(self, pids: Sequence[int], image_ids: Sequence[int], captions: Sequence[str], global_batch: int,
                 samples_per_id: int, lookalike_group: int, seed: int, ctx) -> None:
        if global_batch % ctx.world_size:
            raise ValueError(f"data.batch_size={global_batch} is not divisible by the {ctx.world_size} processes")
        if samples_per_id < 1 or global_batch % samples_per_id:
            raise ValueError(f"data.batch_size={global_batch} is not a multiple of data.samples_per_id={samples_per_id}")
        if lookalike_group < 1:
            raise ValueError(f"data.lookalike_group must be >= 1, got {lookalike_group}")
        self.n, self.global_batch, self.seed, self.ctx = len(pids), global_batch, seed, ctx
        self.K, self.P, self.group = samples_per_id, global_batch // samples_per_id, lookalike_group
        self.local = global_batch // ctx.world_size
        self.steps_per_epoch = self.n // global_batch
        by_id: dict[int, list[int]] = defaultdict(list)
        for i, p in enumerate(pids):
            by_id[int(p)].append(i)
        self.num_ids = max(by_id) + 1
        if len(by_id) < self.P or self.steps_per_epoch < 1:
            raise ValueError(f"data.batch_size={global_batch} needs {self.P} identities x {samples_per_id} samples "
                             f"per batch and at least one batch; the data has {len(by_id)} identities, {self.n} samples")
        self.members = [by_id.get(p, []) for p in range(self.num_ids)]
        self.image_ids = np.asarray(image_ids)
        self.neighbours = (lookalike_neighbours(caption_signatures(pids, captions), 4 * lookalike_group).numpy()
                           if lookalike_group > 1 else None)
        self.epoch, self.start = 0, 0

    def set_position(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return self.steps_per_epoch - self.start

    def _identity_stream(self, rng: np.random.Generator):
        """Identities in look-alike groups, from successive permutations (each drawn once per pass)."""
        live = [p for p in range(self.num_ids) if self.members[p]]
        while True:
            used = np.zeros(self.num_ids, dtype=bool)
            for anchor in rng.permutation(live):
                if used[anchor]:
                    continue
                used[anchor] = True
                yield int(anchor)
                if self.neighbours is None:
                    continue
                taken = 0
                for nb in self.neighbours[anchor]:
                    if taken == self.group - 1:
                        break
                    if not used[nb] and self.members[nb]:
                        used[nb] = True
                        taken += 1
                        yield int(nb)

    def _samples_of(self, pid: int, rng: np.random.Generator) -> list[int]:
        """K samples of ``pid``: distinct images first, then distinct captions, then repeats."""
        idx = np.asarray(self.members[pid])
        order = idx[rng.permutation(len(idx))]
        _, first = np.unique(self.image_ids[order], return_index=True)
        firsts = order[np.sort(first)]
        chosen = set(firsts.tolist())
        rest = np.asarray([i for i in order if i not in chosen], dtype=np.int64)
        seq = np.concatenate([firsts, rest])
        return [int(seq[j % len(seq)]) for j in range(self.K)]

    def global_batches(self) -> list[list[int]]:
        """Every global batch of the current epoch (sample indices, identity by identity)."""
        rng = np.random.default_rng([int(self.seed), 5, int(self.epoch)])
        stream = self._identity_stream(rng)
        out = []
        for _ in range(self.steps_per_epoch):
            batch: list[int] = []
            for _ in range(self.P):
                batch.extend(self._samples_of(next(stream), rng))
            out.append(batch)
        return out

    def __iter__(self):
        r, b = self.ctx.rank, self.local
        for j, batch in enumerate(self.global_batches()):
            if j >= self.start:
                yield batch[r * b:(r + 1) * b]
