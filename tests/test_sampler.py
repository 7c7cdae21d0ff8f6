from collections import Counter

import pytest

from boxcaseg.data.sampler import BOX, SALIENT, MixedBatchSampler


def _epoch(s):
    return [list(b) for b in s]


def test_every_batch_has_the_exact_ratio_and_box_samples_come_first():
    s = MixedBatchSampler(n_box=50, n_salient=30, batch_size=16, box_per_batch=9, seed=1)
    batches = _epoch(s)
    assert len(batches) == len(s) == 30 // 7
    for b in batches:
        assert [r.source for r in b] == [BOX] * 9 + [SALIENT] * 7


def test_each_salient_index_once_per_epoch_and_order_reshuffled():
    s = MixedBatchSampler(n_box=10, n_salient=21, batch_size=4, box_per_batch=1, seed=0)
    e0 = [r.index for b in _epoch(s) for r in b if r.source == SALIENT]
    e1 = [r.index for b in _epoch(s) for r in b if r.source == SALIENT]
    assert sorted(e0) == sorted(e1) == list(range(21))
    assert e0 != e1
    assert s.epoch == 2 and s.batch == 0


def test_drop_last_incomplete_batch():
    s = MixedBatchSampler(n_box=10, n_salient=23, batch_size=4, box_per_batch=1, seed=0)
    sal = [r.index for b in _epoch(s) for r in b if r.source == SALIENT]
    assert len(s) == 7 and len(sal) == 21 and len(set(sal)) == 21


def test_box_samples_without_replacement_within_a_cycle_and_continuing_across_epochs():
    n_box = 13
    s = MixedBatchSampler(n_box=n_box, n_salient=12, batch_size=5, box_per_batch=3, seed=4)
    stream = []
    for _ in range(5):  # 5 epochs x 6 batches x 3 = 90 box samples ~ 6.9 cycles
        stream += [r.index for b in _epoch(s) for r in b if r.source == BOX]
    assert len(stream) == 90
    cycles = [stream[i:i + n_box] for i in range(0, len(stream) - n_box + 1, n_box)]
    for c in cycles:
        assert sorted(c) == list(range(n_box))  # each full cycle is a permutation
    assert cycles[0] != cycles[1]  # reshuffled per cycle
    # epoch 0 ends at position 18, inside cycle 1 (positions 13..25), and cycle 1 is still a
    # permutation: the stream continues across epochs instead of restarting
    assert stream[18:26] != stream[:8]


def test_sample_seeds_are_distinct_and_reproducible():
    a = MixedBatchSampler(n_box=40, n_salient=20, batch_size=6, box_per_batch=3, seed=7)
    b = MixedBatchSampler(n_box=40, n_salient=20, batch_size=6, box_per_batch=3, seed=7)
    c = MixedBatchSampler(n_box=40, n_salient=20, batch_size=6, box_per_batch=3, seed=8)
    ea, eb, ec = _epoch(a), _epoch(b), _epoch(c)
    assert ea == eb and ea != ec
    seeds = [r.seed for bt in ea + _epoch(a) for r in bt]
    assert len(set(seeds)) == len(seeds)


def test_two_ranks_are_disjoint_and_cover_what_one_rank_sees():
    kw = dict(n_box=37, n_salient=29, batch_size=5, box_per_batch=3, seed=3)
    single = MixedBatchSampler(n_box=37, n_salient=29, batch_size=10, box_per_batch=6, seed=3)
    r0 = MixedBatchSampler(**kw, rank=0, world_size=2)
    r1 = MixedBatchSampler(**kw, rank=1, world_size=2)
    assert len(r0) == len(r1) == len(single) == 29 // 4
    for _ in range(2):  # two epochs
        for b_single, b0, b1 in zip(_epoch(single), _epoch(r0), _epoch(r1)):
            assert [r.source for r in b0] == [BOX] * 3 + [SALIENT] * 2
            keys0 = {(r.source, r.index, r.seed) for r in b0}
            keys1 = {(r.source, r.index, r.seed) for r in b1}
            assert not keys0 & keys1
            # the union of the ranks' batches is the global batch of a 1-rank run with the
            # same global batch composition (same samples, same augmentation seeds)
            assert Counter(b0 + b1) == Counter(b_single)


def test_state_dict_resume_reproduces_the_remaining_sequence():
    kw = dict(n_box=31, n_salient=40, batch_size=6, box_per_batch=2, seed=11)
    ref = MixedBatchSampler(**kw)
    full = _epoch(ref) + _epoch(ref) + _epoch(ref)

    s = MixedBatchSampler(**kw)
    head = _epoch(s)  # one epoch (10 batches), then 3 batches of the next
    it = iter(s)
    head += [next(it) for _ in range(3)]
    state = s.state_dict()
    assert state["epoch"] == 1 and state["batch"] == 3
    assert s.state_for_step(13) == state

    t = MixedBatchSampler(**kw)
    t.load_state_dict(state)
    rest = _epoch(t) + _epoch(t)
    assert head + rest == full


def test_load_state_dict_rejects_a_different_sampler():
    a = MixedBatchSampler(n_box=10, n_salient=10, batch_size=4, box_per_batch=2)
    b = MixedBatchSampler(n_box=11, n_salient=10, batch_size=4, box_per_batch=2)
    with pytest.raises(ValueError, match="n_box"):
        b.load_state_dict(a.state_dict())


def test_bad_arguments():
    with pytest.raises(ValueError):
        MixedBatchSampler(n_box=10, n_salient=10, batch_size=4, box_per_batch=5)
    with pytest.raises(ValueError):
        MixedBatchSampler(n_box=0, n_salient=10, batch_size=4, box_per_batch=2)
    with pytest.raises(ValueError, match="no complete batch"):
        MixedBatchSampler(n_box=10, n_salient=3, batch_size=16, box_per_batch=9)


def test_box_only_batches_define_epoch_over_box_set():
    s = MixedBatchSampler(n_box=10, n_salient=0, batch_size=3, box_per_batch=3, seed=0)
    idx = [r.index for b in _epoch(s) for r in b]
    assert len(s) == 3 and len(set(idx)) == 9
