"""Two ranks in two processes with torch.distributed (gloo, CPU): equal batches, full coverage, resume.

Every batch is followed by an all_reduce, as a DDP step would be: a rank
with one batch more than the other would wait in it until the timeout, so an
uneven split fails the test instead of passing silently.
"""
import datetime
import json
import os
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")

from torch.utils.data import DataLoader  # noqa: E402

from imgconv import stores  # noqa: E402
from imgconv.epochs import EpochPlan  # noqa: E402
from imgconv.torch import BatchSampler, Dataset, Loader, collate  # noqa: E402

COUNT = 101
BATCH = 8
WORLD = 2
SCENARIOS = {"pad": dict(pad=True), "no-pad": dict(pad=False), "drop-last": dict(drop_last=True)}


def _step(labels):
    """One training step's collective: all ranks must reach it as often."""
    total = torch.tensor([len(labels)])
    dist.all_reduce(total)
    return labels.tolist()


def _epochs(loader, epochs=2):
    return [[_step(labels) for _, labels in loader] for _ in range(epochs)]


def _rank_main(rank, store_path, directory):
    if sys.platform == "linux":
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # the ranks talk over loopback only
    dist.init_process_group("gloo", init_method=f"file://{directory}/rendezvous", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=60))
    try:
        found = {}
        for name, options in SCENARIOS.items():
            found[name] = _epochs(Loader(store_path, BATCH, seed=3, **options))  # ranks from torch.distributed
        dataset = Dataset(store_path)
        sampler = BatchSampler(dataset, BATCH, seed=3)
        found["dataloader"] = _epochs(DataLoader(dataset, batch_sampler=sampler, collate_fn=collate))
        loader = Loader(store_path, BATCH, seed=3)
        iterator = iter(loader)
        found["before"] = [_step(next(iterator)[1]) for _ in range(3)]
        state = loader.state_dict()
        restarted = Loader(store_path, BATCH, seed=0)
        restarted.load_state_dict(state)
        found["after"] = [_step(labels) for _, labels in restarted]
        found["state"] = state
        with open(os.path.join(directory, f"rank{rank}.json"), "w") as f:
            json.dump(found, f)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    directory = tmp_path_factory.mktemp("ddp")
    store_path = str(directory / "store.lmdb")
    images = np.random.default_rng(0).integers(0, 256, (COUNT, 4, 4, 3), dtype=np.uint8)
    with stores.create(store_path) as writer:
        writer.append(images, np.arange(COUNT))
    torch.multiprocessing.start_processes(_rank_main, args=(store_path, str(directory)), nprocs=WORLD,
                                          start_method="spawn", join=True)
    out = []
    for rank in range(WORLD):
        with open(directory / f"rank{rank}.json") as f:
            out.append(json.load(f))
    return out


@pytest.mark.parametrize("scenario", [*SCENARIOS, "dataloader"])
def test_ranks_get_equal_batches_and_cover_each_epoch(results, scenario):
    options = SCENARIOS.get(scenario, {})
    for epoch in range(2):
        shares = [r[scenario][epoch] for r in results]
        assert len(shares[0]) == len(shares[1]) > 0
        flat = [i for share in shares for batch in share for i in batch]
        if options.get("pad", True) and not options.get("drop_last"):
            assert set(flat) == set(range(COUNT)) and len(flat) == COUNT + 1  # one image repeated
        if not options.get("pad", True):
            assert len(flat) == len(set(flat)) == COUNT - 1
        if options.get("drop_last"):
            assert all(len(batch) == BATCH for share in shares for batch in share)
            assert len(flat) == len(set(flat))


@pytest.mark.parametrize("scenario", [*SCENARIOS, "dataloader"])
def test_same_order_for_the_same_seed_and_epoch_a_new_one_next_epoch(results, scenario):
    options = SCENARIOS.get(scenario, {})
    for rank, result in enumerate(results):
        plan = EpochPlan(COUNT, BATCH, seed=3, rank=rank, world_size=WORLD, **options)
        for epoch in range(2):
            assert result[scenario][epoch] == [b.indices.tolist() for b in plan.batches(epoch)]
        assert result[scenario][0] != result[scenario][1]


def test_resume_after_k_batches_yields_exactly_the_rest_on_every_rank(results):
    for result in results:
        assert result["before"] + result["after"] == result["pad"][0]
        assert result["state"]["batches_done"] == 3 and result["state"]["world_size"] == WORLD
    assert results[0]["state"] == results[1]["state"]  # one checkpoint serves every rank
