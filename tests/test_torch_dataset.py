"""imgconv.torch.Dataset, BatchSampler and collate under torch's own DataLoader, fork and spawn."""
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch.utils.data import DataLoader  # noqa: E402

from imgconv import stores  # noqa: E402
from imgconv.augment import CropFlipNormalize  # noqa: E402
from imgconv.epochs import EpochPlan, batch_generator  # noqa: E402
from imgconv.torch import BatchSampler, Dataset, collate  # noqa: E402
from imgconv.torch.dataset import SampleBatch  # noqa: E402

COUNT = 57
IMAGES = np.random.default_rng(1).integers(0, 256, (COUNT, 6, 6, 3), dtype=np.uint8)
TRANSFORM = CropFlipNormalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), padding=2, flip=True)


@pytest.fixture(scope="module", params=["lmdb", "png"])
def store_path(request, tmp_path_factory):
    suffix = {"lmdb": ".lmdb", "png": "_png"}[request.param]
    path = str(tmp_path_factory.mktemp("dataset") / ("store" + suffix))
    with stores.create(path) as writer:
        writer.append(IMAGES, np.arange(COUNT))
    return path


def run_epochs(loader, sampler, epochs):
    out = []
    for _ in range(epochs):
        batches = []
        for images, labels in loader:
            assert np.array_equal(images.numpy(), IMAGES[labels.numpy()])
            batches.append(labels.tolist())
        out.append(batches)
    return out


@pytest.mark.parametrize("workers,context", [(0, None), (2, "fork")])
def test_dataloader_epochs_follow_the_plan(store_path, workers, context):
    dataset = Dataset(store_path)
    sampler = BatchSampler(dataset, 8, seed=3)
    options = dict(num_workers=workers, multiprocessing_context=context, persistent_workers=True) if workers else {}
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, **options)
    assert len(loader) == 8
    epochs = run_epochs(loader, sampler, 2)
    for epoch, batches in enumerate(epochs):
        assert batches == [b.indices.tolist() for b in EpochPlan(COUNT, 8, seed=3).batches(epoch)]
    assert epochs[0] != epochs[1]
    assert sampler.epoch == 1


def test_spawned_persistent_workers_follow_the_plan_with_transforms(tmp_path):
    # One spawn run (each spawned worker imports torch: seconds) covers epochs, persistence and transforms.
    path = str(tmp_path / "spawn.lmdb")
    with stores.create(path) as writer:
        writer.append(IMAGES, np.arange(COUNT))
    dataset = Dataset(path, transform=TRANSFORM)
    sampler = BatchSampler(dataset, 8, seed=6)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=2,
                        multiprocessing_context="spawn", persistent_workers=True)
    for epoch in range(2):
        got = list(loader)
        planned = list(EpochPlan(COUNT, 8, seed=6).batches(epoch))
        assert [labels.tolist() for _, labels in got] == [b.indices.tolist() for b in planned]
        for (images, _), batch in zip(got, planned):
            expected = TRANSFORM(IMAGES[batch.indices], rng=batch_generator(6, epoch, batch.position))
            assert np.array_equal(images.numpy(), expected)


def test_the_default_collate_works_too(store_path):
    dataset = Dataset(store_path)
    loader = DataLoader(dataset, batch_sampler=BatchSampler(dataset, 10, shuffle=False))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "non-writable array" warning from torch
        images, labels = next(iter(loader))
    assert images.shape == (10, 6, 6, 3) and labels.tolist() == list(range(10))
    assert np.array_equal(images.numpy(), IMAGES[:10])
    plain = DataLoader(dataset, batch_size=4)  # torch's own sampler, per-item __getitem__ path unused
    images, labels = next(iter(plain))
    assert np.array_equal(images.numpy(), IMAGES[:4])


def test_items_and_batches(store_path):
    dataset = Dataset(store_path)
    assert len(dataset) == COUNT
    image, label = dataset[5]
    assert isinstance(image, torch.Tensor) and label == 5 and np.array_equal(image.numpy(), IMAGES[5])
    batch = dataset.__getitems__([3, 1, 3])
    assert isinstance(batch, SampleBatch) and len(batch) == 3 and batch[1][1] == 1
    images, labels = collate(batch)
    assert labels.tolist() == [3, 1, 3] and images.data_ptr() == torch.from_numpy(batch.images).data_ptr()


@pytest.mark.parametrize("workers,context", [(0, None), (2, "fork")])
def test_transforms_are_seeded_by_the_batch_whatever_the_workers(store_path, workers, context):
    dataset = Dataset(store_path, transform=TRANSFORM)
    sampler = BatchSampler(dataset, 16, seed=4)
    options = dict(num_workers=workers, multiprocessing_context=context) if workers else {}
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, **options)
    got = list(loader)
    for (images, labels), batch in zip(got, EpochPlan(COUNT, 16, seed=4).batches(0)):
        expected = TRANSFORM(IMAGES[batch.indices], rng=batch_generator(4, 0, batch.position))
        assert labels.tolist() == batch.indices.tolist()
        assert np.array_equal(images.numpy(), expected)


def test_without_the_sampler_transforms_follow_torch_seed(store_path):
    dataset = Dataset(store_path, transform=TRANSFORM)
    torch.manual_seed(0)
    a = next(iter(DataLoader(dataset, batch_size=8, collate_fn=collate)))[0]
    torch.manual_seed(0)
    b = next(iter(DataLoader(dataset, batch_size=8, collate_fn=collate)))[0]
    assert torch.equal(a, b)


def test_sampler_resume_with_batches_read_ahead(store_path):
    dataset = Dataset(store_path)
    sampler = BatchSampler(dataset, 5, seed=9)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=2,
                        multiprocessing_context="fork")
    whole = [labels.tolist() for _, labels in loader]
    sampler.set_epoch(0)
    iterator = iter(loader)
    taken = [next(iterator)[1].tolist() for _ in range(4)]  # the workers have read further
    state = sampler.state_dict(batches_done=4)
    del iterator
    restarted = BatchSampler(dataset, 5, seed=0)
    restarted.load_state_dict(state)
    rest = [labels.tolist() for _, labels in DataLoader(dataset, batch_sampler=restarted, collate_fn=collate)]
    assert taken + rest == whole
    with pytest.raises(ValueError, match="batches_done=99 but this pass has"):
        sampler.state_dict(batches_done=99)


def test_sampler_ranks_and_epochs():
    samplers = [BatchSampler(30, 4, seed=1, rank=r, world_size=4, pad=False) for r in range(4)]
    shares = [[list(b) for b in s] for s in samplers]
    assert len({len(s) for s in shares}) == 1
    flat = [i for s in shares for b in s for i in b]
    assert len(flat) == len(set(flat)) == 28
    again = [[list(b) for b in s] for s in samplers]  # a complete pass moves on
    assert again != shares and all(s.epoch == 1 for s in samplers)
    samplers[0].set_epoch(0)
    assert [list(b) for b in samplers[0]] == shares[0]
