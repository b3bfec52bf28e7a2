"""The epoch plan (imgconv.epochs): orders, equal shares across ranks, resume; no torch needed."""
import collections
import itertools

import numpy as np
import pytest

from imgconv.epochs import EpochPlan, EpochState, batch_generator, epoch_order, worker_share


def rank_batches(length, batch_size, world_size, epoch=0, samples_done=0, **options):
    """Every rank's batches (lists of index lists) of one epoch."""
    return [[b.indices.tolist() for b in EpochPlan(length, batch_size, rank=r, world_size=world_size,
                                                     **options).batches(epoch, samples_done)]
            for r in range(world_size)]


def test_order_is_a_permutation_fixed_by_seed_and_epoch():
    order = epoch_order(1000, seed=3, epoch=0)
    assert sorted(order.tolist()) == list(range(1000)) and order.dtype == np.int64
    assert np.array_equal(order, epoch_order(1000, 3, 0))
    assert not np.array_equal(order, epoch_order(1000, 3, 1))  # a new epoch, a new order
    assert not np.array_equal(order, epoch_order(1000, 4, 0))  # a new seed, a new order
    assert np.array_equal(epoch_order(1000, 3, 0, shuffle=False), np.arange(1000))


def test_order_is_pinned():
    # The order must not change between NumPy versions or machines: a resumed
    # job depends on it. PCG64's raw stream is stable; these are its values.
    assert epoch_order(10, seed=0, epoch=0).tolist() == [2, 1, 6, 7, 4, 8, 5, 9, 0, 3]
    assert epoch_order(10, seed=1, epoch=2).tolist() == [1, 7, 3, 9, 0, 8, 4, 6, 5, 2]


@pytest.mark.parametrize("length", [0, 1, 7, 10, 64, 101])
@pytest.mark.parametrize("world_size", [1, 2, 3, 8])
@pytest.mark.parametrize("batch_size", [1, 4, 16])
@pytest.mark.parametrize("drop_last", [False, True])
def test_every_rank_gets_the_same_number_of_batches_and_images(length, world_size, batch_size, drop_last):
    for pad in (True, False):
        shares = rank_batches(length, batch_size, world_size, pad=pad, drop_last=drop_last, seed=5)
        counts = {len(batches) for batches in shares}
        assert len(counts) == 1, f"ranks got {[len(b) for b in shares]} batches"
        sizes = {tuple(len(b) for b in batches) for batches in shares}
        assert len(sizes) == 1, "every rank's batches have the same sizes"
        plan = EpochPlan(length, batch_size, world_size=world_size, pad=pad, drop_last=drop_last)
        assert counts == {plan.num_batches()}
        assert sum(map(len, shares[0])) == plan.num_samples()
        if drop_last:
            assert all(len(b) == batch_size for batches in shares for b in batches)


@pytest.mark.parametrize("length,world_size,batch_size", [(10, 3, 2), (100, 8, 5), (64, 4, 16), (5, 8, 2)])
def test_padding_covers_everything_once_and_repeats_only_to_even_the_shares(length, world_size, batch_size):
    shares = rank_batches(length, batch_size, world_size, pad=True, seed=1)
    seen = collections.Counter(i for batches in shares for b in batches for i in b)
    assert set(seen) == set(range(length))  # complete
    total = sum(seen.values())
    assert total == -(-length // world_size) * world_size  # only the padding repeats
    extra = total - length
    assert sum(c - 1 for c in seen.values()) == extra


@pytest.mark.parametrize("length,world_size,batch_size", [(10, 3, 2), (100, 8, 5), (64, 4, 16)])
def test_without_padding_nothing_repeats_and_only_the_remainder_is_left_out(length, world_size, batch_size):
    shares = rank_batches(length, batch_size, world_size, pad=False, seed=1)
    read = [i for batches in shares for b in batches for i in b]
    assert len(read) == len(set(read)) == length // world_size * world_size  # disjoint
    left_out = set(range(length)) - set(read)
    order = epoch_order(length, 1, 0)
    assert left_out == set(order[len(read):].tolist())  # the end of the order, not a bias of the store


def test_ranks_read_disjoint_runs_of_each_global_step():
    shares = rank_batches(40, 4, 2, shuffle=False)
    assert shares[0][:2] == [[0, 1, 2, 3], [8, 9, 10, 11]]
    assert shares[1][:2] == [[4, 5, 6, 7], [12, 13, 14, 15]]


def test_positions_are_unique_and_locate_the_batch_in_the_order():
    plan_batches = [list(EpochPlan(50, 4, rank=r, world_size=3, seed=2).batches(1)) for r in range(3)]
    positions = [b.position for batches in plan_batches for b in batches]
    assert len(positions) == len(set(positions))
    order = epoch_order(50, 2, 1)
    padded = np.resize(order, 51)
    for batches in plan_batches:
        for b in batches:
            assert np.array_equal(b.indices, padded[b.position : b.position + len(b.indices)])
        assert [b.number for b in batches] == list(range(len(batches)))


@pytest.mark.parametrize("pad,drop_last", [(True, False), (False, False), (True, True)])
@pytest.mark.parametrize("k", [0, 1, 3, 5])
def test_resume_after_k_batches_yields_exactly_the_rest(pad, drop_last, k):
    options = dict(pad=pad, drop_last=drop_last, seed=9)
    for world_size in (1, 3):
        plans = [EpochPlan(53, 4, rank=r, world_size=world_size, **options) for r in range(world_size)]
        whole = [list(p.batches(2)) for p in plans]
        epoch, samples_done = plans[0].position_after(2, 0, k)
        for plan, batches in zip(plans, whole):
            rest = list(plan.batches(epoch, samples_done)) if epoch == 2 else []
            assert [b.indices.tolist() for b in rest] == [b.indices.tolist() for b in batches[k:]]
            assert [b.position for b in rest] == [b.position for b in batches[k:]]
            assert [b.number for b in rest] == [b.number for b in batches[k:]]


def test_the_end_of_an_epoch_is_the_start_of_the_next():
    plan = EpochPlan(10, 3)
    assert plan.num_batches() == 4
    assert plan.position_after(0, 0, 3) == (0, 9)
    assert plan.position_after(0, 0, 4) == (1, 0)
    assert plan.position_after(0, 9, 1) == (1, 0)


def test_resume_on_another_number_of_ranks_reads_the_rest_of_the_order():
    length, batch_size = 103, 4
    done_before = rank_batches(length, batch_size, 2, seed=4)
    k = 5
    first = [i for batches in done_before for b in batches[:k] for i in b]
    samples_done = EpochPlan(length, batch_size, world_size=2).position_after(0, 0, k)[1]
    assert samples_done == len(first) == k * 2 * batch_size
    after = rank_batches(length, batch_size, 3, samples_done=samples_done, seed=4)
    counts = {len(batches) for batches in after}
    assert len(counts) == 1
    rest = [i for batches in after for b in batches for i in b]
    assert set(first) | set(rest) == set(range(length))  # nothing missed
    assert len(set(first) & set(rest)) <= 3 - 1  # only the padding of the new shares repeats


def test_worker_share_splits_round_robin_and_restores_the_order():
    batches = list(range(11))
    shares = [list(worker_share(iter(batches), w, 3)) for w in range(3)]
    assert shares == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8]]
    merged = [b for group in itertools.zip_longest(*shares) for b in group if b is not None]
    assert merged == batches
    with pytest.raises(ValueError, match="worker must be below workers"):
        worker_share(batches, 3, 3)


def test_batch_generator_depends_on_seed_epoch_and_position_only():
    a = batch_generator(1, 2, 3).integers(0, 1 << 30, 8)
    assert np.array_equal(a, batch_generator(1, 2, 3).integers(0, 1 << 30, 8))
    for other in ((0, 2, 3), (1, 1, 3), (1, 2, 4)):
        assert not np.array_equal(a, batch_generator(*other).integers(0, 1 << 30, 8))


def test_state_round_trip_and_mismatches():
    plan = EpochPlan(100, 8, world_size=2, seed=7)
    state = EpochState.as_dict(plan, 3, 32, 2)
    assert EpochState.from_dict(state, plan) == (3, 32, 7)
    other_seed = EpochPlan(100, 8, world_size=2, seed=8)
    assert EpochState.from_dict(state, other_seed) == (3, 32, 7)  # the saved seed wins
    assert EpochState.from_dict(state, EpochPlan(100, 4)) == (3, 32, 7)  # batch size and ranks may change
    with pytest.raises(ValueError, match="saved for 100 images, this dataset has 99"):
        EpochState.from_dict(state, EpochPlan(99, 8))
    with pytest.raises(ValueError, match="shuffle=True"):
        EpochState.from_dict(state, EpochPlan(100, 8, shuffle=False))
    with pytest.raises(ValueError, match="not a loader state"):
        EpochState.from_dict({"epoch": 1}, plan)
    with pytest.raises(ValueError, match="version"):
        EpochState.from_dict(dict(state, version=99), plan)
    with pytest.raises(TypeError):
        EpochState.from_dict([1, 2], plan)


@pytest.mark.parametrize("args,message", [
    (dict(length=-1, batch_size=1), "length must be at least 0"),
    (dict(length=10, batch_size=0), "batch_size must be at least 1"),
    (dict(length=10, batch_size=2, rank=2, world_size=2), "rank must be below world_size"),
    (dict(length=10, batch_size=2, seed=-1), "seed must be at least 0"),
    (dict(length=10, batch_size=2.5), "batch_size must be an integer"),
    (dict(length=10, batch_size=True), "batch_size must be an integer"),
])
def test_bad_arguments_are_named(args, message):
    with pytest.raises((TypeError, ValueError), match=message):
        EpochPlan(**args)
