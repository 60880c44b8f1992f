"""Identity-balanced batches: P identities x K samples, look-alike identities together, resumable."""

from __future__ import annotations

import pytest

from uca_model.config import ConfigError, DataConfig
from uca_model.distributed import DistContext
from uca_model.sampling import IdentityBatchSampler, caption_signatures, lookalike_neighbours

COLOURS = ["red", "blue", "green", "black", "white", "yellow", "pink", "grey", "brown", "purple"]


def _data(num_families=10, per_family=4, images=3, captions=2):
    """Families of identities that share a coat colour and differ in what they carry: the look-alikes
    of an identity are its family. Returns pids, image_ids, captions, family of each pid."""
    carry = ["backpack", "handbag", "suitcase", "umbrella"]
    pids, image_ids, caps, family = [], [], [], []
    pid = img = 0
    for f in range(num_families):
        for m in range(per_family):
            family.append(f)
            for _ in range(images):
                for c in range(captions):
                    pids.append(pid)
                    image_ids.append(img)
                    caps.append(f"a man in a {COLOURS[f]} coat with a {carry[m % 4]}" + (" and shoes" if c else ""))
                img += 1
            pid += 1
    return pids, image_ids, caps, family


def test_signatures_find_the_family():
    pids, _, caps, family = _data()
    nb = lookalike_neighbours(caption_signatures(pids, caps), 3)
    assert nb.shape == (40, 3)
    same = sum(family[int(j)] == family[i] for i in range(40) for j in nb[i])
    assert same == 40 * 3  # every nearest neighbour of an identity is in its family


@pytest.mark.parametrize("group", [1, 4])
def test_batches_are_p_identities_of_k_distinct_images(group):
    pids, image_ids, caps, family = _data()
    s = IdentityBatchSampler(pids, image_ids, caps, global_batch=16, samples_per_id=4, lookalike_group=group,
                             seed=0, ctx=DistContext())
    batches = list(s)
    assert len(batches) == len(pids) // 16 == s.steps_per_epoch
    for b in batches:
        assert len(b) == 16
        ids = [pids[i] for i in b]
        assert ids == [x for x in ids[::4] for _ in range(4)] and len(set(ids)) == 4  # 4 identities x 4
        for k in range(4):  # 3 images per identity: the 4 samples cover all three
            assert len({image_ids[i] for i in b[4 * k:4 * k + 4]}) == 3
    same_family = [len({family[pids[i]] for i in b}) for b in batches]
    if group == 4:
        assert all(n == 1 for n in same_family)  # a group of 4 = a whole family, aligned with the batches
    else:
        assert sum(n == 1 for n in same_family) < len(batches) / 2


def test_every_identity_is_drawn_before_any_repeats():
    pids, image_ids, caps, _ = _data()
    s = IdentityBatchSampler(pids, image_ids, caps, global_batch=16, samples_per_id=4, lookalike_group=4,
                             seed=3, ctx=DistContext())
    first_pass = [pids[i] for b in s.global_batches() for i in b[::4]][:40]
    assert sorted(first_pass) == list(range(40))


def test_deterministic_resumable_and_split_over_ranks():
    pids, image_ids, caps, _ = _data()
    kw = dict(global_batch=16, samples_per_id=4, lookalike_group=2, seed=7)
    whole = IdentityBatchSampler(pids, image_ids, caps, ctx=DistContext(), **kw)
    whole.set_position(2)
    full = list(whole)
    assert full == list(whole)  # same epoch, same batches
    whole.set_position(3)
    assert list(whole) != full  # another epoch, another order
    whole.set_position(2, start=5)
    assert list(whole) == full[5:] and len(whole) == len(full) - 5
    ranks = [IdentityBatchSampler(pids, image_ids, caps, ctx=DistContext(r, 2), **kw) for r in range(2)]
    for r in ranks:
        r.set_position(2)
    for b, b0, b1 in zip(full, *ranks):
        assert b == b0 + b1


def test_bad_settings_are_named():
    pids, image_ids, caps, _ = _data(num_families=2)
    with pytest.raises(ValueError, match="samples_per_id"):
        IdentityBatchSampler(pids, image_ids, caps, 18, 4, 1, 0, DistContext())
    with pytest.raises(ValueError, match="identities"):
        IdentityBatchSampler(pids, image_ids, caps, 64, 4, 1, 0, DistContext())  # 16 ids needed, 8 there
    with pytest.raises(ConfigError, match="data.samples_per_id"):
        DataConfig(sampler="identity", batch_size=18, samples_per_id=4).validate()
    with pytest.raises(ConfigError, match="data.sampler"):
        DataConfig(sampler="pk").validate()


def test_batch_stats_count_what_a_batch_holds(tmp_path):
    from benchmarks.batch_stats import batch_stats
    from uca_model.synth import generate_synthpedes

    root = tmp_path / "tiny"
    generate_synthpedes(root, "tiny", seed=0, progress=False)
    rnd = batch_stats(str(root), ["data.batch_size=16"], batches=3)
    pk = batch_stats(str(root), ["data.batch_size=16", "data.sampler=identity", "data.samples_per_id=4"], batches=3)
    assert pk["same_identity"] == 3.0  # K - 1 other samples of each identity
    assert rnd["same_identity"] < 3.0 and rnd["batches"] == pk["batches"] == 3
    assert pk["lookalike_identities"] >= 0 and pk["fitting_other_images"] >= 0
