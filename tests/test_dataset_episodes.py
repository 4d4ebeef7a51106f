"""EpisodeTasks over map-style data sets (the package's ImageFolderDataset, a torchvision
ImageFolder stand-in, tensor and sequence data sets) and ImageFolderDataset itself."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import IterableDataset, Subset, TensorDataset

from learnedopt.algorithms import build_algorithm
from learnedopt.learners import Conv4
from learnedopt.tasks import (EpisodeTasks, ImageFolderDataset, ImageFolderTasks, SamplerError,
                              TaskBatch, check_sampler, image_cache)
from learnedopt.tasks.base import FIXED_TASK_CHUNK
from learnedopt.tasks.dataset_episodes import pil_to_tensor
from tests.fewshot_data import TINY_FOLDER_CLASSES, tiny_image_folder  # noqa: F401 (fixture)
from tests.test_image_folder import check_task_labels, read_image
from tests.conftest import requires_cuda
from tests.torchvision_standin import FakeImageFolder

SIZE = 16
FIELDS = ("x_support", "y_support", "x_query", "y_query")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("dataset-episodes-cache")


def folder_sets(root, cache, **kw):
    return {split: ImageFolderDataset(root, split=split, image_size=SIZE, cache_dir=cache, **kw)
            for split in ("train", "val", "test")}


def resize(image):
    from PIL import Image
    return image.resize((SIZE, SIZE), resample=Image.Resampling.LANCZOS)


def same(a: TaskBatch, b: TaskBatch) -> bool:
    return all(torch.equal(getattr(a, f), getattr(b, f)) for f in FIELDS)


def cat(batches):
    return TaskBatch(*(torch.cat([getattr(b, f) for b in batches]) for f in FIELDS))


def blobs(classes=6, per_class=8, shape=(4,), seed=0):
    """A TensorDataset of ``classes`` Gaussian blobs, labels 0..classes-1 (targets-less)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes).repeat_interleave(per_class)
    x = labels.float().view(-1, *[1] * len(shape)) + 0.01 * torch.randn(len(labels), *shape, generator=g)
    return TensorDataset(x, labels)


# ---- ImageFolderDataset -----------------------------------------------------------------------
def test_image_folder_dataset_has_the_torchvision_interface(tiny_image_folder, cache):
    train = ImageFolderDataset(tiny_image_folder, split="train", image_size=SIZE, cache_dir=cache)
    counts = TINY_FOLDER_CLASSES["train"]
    assert len(train) == sum(counts) and train.classes == [f"n{c:04d}" for c in range(len(counts))]
    assert train.class_to_idx == {name: i for i, name in enumerate(train.classes)}
    assert train.targets == [c for c, n in enumerate(counts) for _ in range(n)]
    x, y = train[7]
    assert x.dtype == torch.float32 and x.shape == (3, SIZE, SIZE) and 0 <= x.min() <= x.max() <= 1
    assert isinstance(y, int) and read_image(x, "train") == (y, 7 - counts[0])
    with pytest.raises(IndexError):
        train[len(train)]
    # A bare folder of class folders is the same data set.
    bare = ImageFolderDataset(tiny_image_folder / "train", image_size=SIZE, cache_dir=cache)
    assert bare.classes == train.classes and torch.equal(bare.images, train.images)
    assert "6 classes" in repr(bare)


def test_image_folder_dataset_reads_its_cache_and_applies_the_transform(tiny_image_folder, tmp_path,
                                                                        monkeypatch):
    first = ImageFolderDataset(tiny_image_folder / "val", image_size=SIZE, cache_dir=tmp_path)

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although a valid cache exists")
    monkeypatch.setattr(image_cache, "decode_images", no_decoding)
    second = ImageFolderDataset(tiny_image_folder / "val", image_size=SIZE, cache_dir=tmp_path,
                                transform=lambda x: 1 - x)
    assert torch.equal(first.images, second.images)
    assert torch.allclose(second[0][0], 1 - first[0][0])


def test_image_folder_dataset_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageFolderDataset(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="image_size must be an int >= 1"):
        ImageFolderDataset(tmp_path, image_size=0)
    with pytest.raises(ValueError, match="holds no classes"):
        ImageFolderDataset(tmp_path, cache_dir=tmp_path / "c")


# ---- episodes over image folders --------------------------------------------------------------
def test_episodes_over_image_folder_datasets_equal_the_builtin_image_tasks(tiny_image_folder, cache):
    """Same class order, same item order, same episode drawing code: the generic path over the
    package's data set gives exactly the built-in sampler's tasks."""
    options = dict(ways=3, shots=2, queries=3)
    generic = EpisodeTasks(**folder_sets(tiny_image_folder, cache), **options)
    builtin = ImageFolderTasks(tiny_image_folder, image_size=SIZE, cache_dir=cache, **options)
    for seed in (0, 1):
        assert same(generic.sample(4, torch.Generator().manual_seed(seed)),
                    builtin.sample(4, torch.Generator().manual_seed(seed)))
    assert same(cat(list(generic.fixed_tasks("test", 5, 2, seed=3))),
                cat(list(builtin.fixed_tasks("test", 5, 5, seed=3))))
    flat = generic.sample_flat(20, torch.Generator().manual_seed(0))
    expected = builtin.sample_flat(20, torch.Generator().manual_seed(0))
    assert torch.equal(flat[0], expected[0]) and torch.equal(flat[1], expected[1])
    assert flat[2] == expected[2] == 6
    summary = check_sampler(generic)
    assert summary.x_shape == (3, SIZE, SIZE) and summary.has_sample_flat


def test_torchvision_image_folder_standin(tiny_image_folder, cache):
    sets = {s: FakeImageFolder(tiny_image_folder / s, transform=resize) for s in ("train", "val", "test")}
    tasks = EpisodeTasks(**sets, ways=3, shots=1, queries=2)
    assert all(d.loads == 0 for d in sets.values())  # labels came from .targets, no item loaded
    batch = tasks.sample(6, torch.Generator().manual_seed(0))
    assert batch.x_support.shape == (6, 3, 3, SIZE, SIZE) and batch.x_support.dtype == torch.float32
    assert sets["train"].loads == 6 * 3 * 3
    check_task_labels(batch, "train", 3)
    check_task_labels(next(tasks.fixed_tasks("val", 4, 4, seed=0)), "val", 3)
    # Pillow's resize of the raw image and the cache's decode agree up to JPEG rounding.
    builtin = ImageFolderTasks(tiny_image_folder, ways=3, shots=1, queries=2, image_size=SIZE,
                               cache_dir=cache)
    reference = builtin.sample(6, torch.Generator().manual_seed(0))
    assert torch.equal(batch.y_query, reference.y_query)
    assert (batch.x_query - reference.x_query).abs().max() <= 3 / 255
    x, y, num_labels = tasks.sample_flat(12, torch.Generator().manual_seed(1))
    assert num_labels == 6 and [read_image(img, "train")[0] for img in x] == y.tolist()
    check_sampler(tasks)


def test_without_targets_labels_take_one_pass_and_give_the_same_tasks(tiny_image_folder):
    with_targets = FakeImageFolder(tiny_image_folder / "train", transform=resize)

    class NoTargets:  # a plain map-style data set: __len__ and __getitem__ only
        def __init__(self, inner):
            self.inner = inner

        def __len__(self):
            return len(self.inner)

        def __getitem__(self, i):
            return self.inner[i]

    plain = NoTargets(FakeImageFolder(tiny_image_folder / "train", transform=resize))
    a = EpisodeTasks(plain, ways=2, shots=2, queries=1)
    assert plain.inner.loads == len(plain)
    b = EpisodeTasks(with_targets, ways=2, shots=2, queries=1)
    g = lambda: torch.Generator().manual_seed(4)  # noqa: E731
    assert same(a.sample(3, g()), b.sample(3, g()))


def test_subset_labels_come_from_the_parent_targets(tiny_image_folder):
    parent = FakeImageFolder(tiny_image_folder / "train", transform=resize)
    keep = [i for i, t in enumerate(parent.targets) if t in (1, 3, 4)]
    tasks = EpisodeTasks(Subset(parent, keep), ways=3, shots=2, queries=2)
    assert parent.loads == 0 and tasks.num_split_classes("train") == 3
    batch = tasks.sample(5, torch.Generator().manual_seed(0))
    seen = {read_image(x, "train")[0] for x in batch.x_support.flatten(0, 1)}
    assert seen == {1, 3, 4}


# ---- seeding, fixed tasks, class splits -------------------------------------------------------
def test_same_seed_same_tasks_and_fixed_tasks_independent_of_batch_size():
    tasks = EpisodeTasks(blobs(), blobs(seed=1), blobs(seed=2), ways=3, shots=2, queries=2)
    a, b, c = (tasks.sample(4, torch.Generator().manual_seed(s)) for s in (5, 5, 6))
    assert same(a, b) and not same(a, c)
    g = torch.Generator().manual_seed(0)
    assert not same(tasks.sample(4, g), tasks.sample(4, g))
    total = FIXED_TASK_CHUNK + 3
    reference = cat(list(tasks.fixed_tasks("val", total, total, seed=1)))
    for batch_size in (1, 10, 60):
        assert same(cat(list(tasks.fixed_tasks("val", total, batch_size, seed=1))), reference)
    assert not same(cat(list(tasks.fixed_tasks("test", total, total, seed=1))), reference)
    # Labels are relabelled per episode, 0..ways-1 in a random order of the chosen classes.
    for x, y in zip(a.x_support, a.y_support):
        classes = x[:, 0].round().long()
        assert sorted(set(y.tolist())) == [0, 1, 2]
        assert len(set(classes.tolist())) == 3
        assert all(len(set(classes[y == label].tolist())) == 1 for label in range(3))
    orders = {tuple(x[::2, 0].round().long().tolist()) for x in tasks.sample(32, g).x_support}
    assert len(orders) > 10  # not always the same classes
    assert any(list(o) != sorted(o) for o in orders)  # label 0 is not always the smallest class


def test_class_split_of_one_dataset():
    data = blobs(classes=10)
    tasks = EpisodeTasks.from_class_split(data, val_classes=2, test_classes=3, split_seed=0,
                                          ways=2, shots=1, queries=3)
    classes = {split: set() for split in ("train", "val", "test")}
    batches = {"train": tasks.sample(40, torch.Generator().manual_seed(0)),
               "val": next(tasks.fixed_tasks("val", 40, 40, seed=0)),
               "test": next(tasks.fixed_tasks("test", 40, 40, seed=0))}
    for split, batch in batches.items():
        classes[split] = set(batch.x_query[..., 0].round().long().flatten().tolist())
    assert [len(classes[s]) for s in ("train", "val", "test")] == [5, 2, 3]
    assert set.union(*classes.values()) == set(range(10))
    record = tasks.config()["class_split"]
    assert sorted(record["val_classes"]) == sorted(classes["val"]) and record["split_seed"] == 0
    assert tasks.config()["classes"] == {"train": 5, "val": 2, "test": 3}
    partitions = {tuple(EpisodeTasks.from_class_split(data, val_classes=2, test_classes=3,
                                                      split_seed=s, ways=2, queries=1).config()
                        ["class_split"]["test_classes"]) for s in range(4)}
    assert len(partitions) > 1
    explicit = EpisodeTasks.from_class_split(data, val_classes=[0, 1], test_classes=2, ways=2,
                                             queries=1)
    assert explicit.config()["class_split"]["val_classes"] == [0, 1]
    assert 0 not in explicit.config()["class_split"]["test_classes"]
    check_sampler(tasks)


def test_sequences_keep_their_token_ids():
    tokens = torch.randint(0, 50, (60, 7), generator=torch.Generator().manual_seed(0))
    data = TensorDataset(tokens, torch.arange(60) % 5)
    tasks = EpisodeTasks(data, data, data, ways=5, shots=2, queries=1)
    batch = tasks.sample(2, torch.Generator().manual_seed(0))
    assert batch.x_support.dtype == torch.int64 and batch.x_support.shape == (2, 10, 7)
    rows = {tuple(r) for r in tokens.tolist()}
    assert all(tuple(r) in rows for r in batch.x_support.flatten(0, 1).tolist())
    check_sampler(tasks)


# ---- conversions ------------------------------------------------------------------------------
def test_pil_modes():
    from PIL import Image
    gray = pil_to_tensor(Image.new("L", (5, 4), 51))
    assert gray.shape == (1, 4, 5) and torch.allclose(gray, torch.full_like(gray, 0.2))
    rgb = pil_to_tensor(Image.new("RGB", (2, 2), (255, 0, 51)))
    assert rgb[:, 0, 0].tolist() == pytest.approx([1.0, 0.0, 0.2])
    palette = Image.new("RGB", (2, 2), (10, 20, 30)).convert("P")
    assert pil_to_tensor(palette).shape == (3, 2, 2)
    with pytest.raises(ValueError, match="mode 'I;16'"):
        pil_to_tensor(Image.new("I;16", (2, 2)))


def test_numpy_items_and_dtype():
    import numpy as np

    class Arrays:
        def __len__(self):
            return 20

        def __getitem__(self, i):
            return np.full((2, 3), float(i)), i % 4   # float64 arrays, int labels

    tasks = EpisodeTasks(Arrays(), ways=2, shots=2, queries=1)
    assert tasks.sample(1, torch.Generator()).x_support.dtype == torch.float32
    keep = EpisodeTasks(Arrays(), ways=2, shots=2, queries=1, dtype=None)
    assert keep.sample(1, torch.Generator()).x_support.dtype == torch.float64


# ---- errors -----------------------------------------------------------------------------------
class Items:
    """A map-style data set returning ``items[i]`` (with optional stale ``targets``)."""
    def __init__(self, items, targets=None):
        self.items = items
        if targets is not None:
            self.targets = targets

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_clear_errors(tiny_image_folder):
    data = blobs(classes=4, per_class=3)
    with pytest.raises(ValueError, match="5-way episodes need at least 5 classes, the 'train' split has 4"):
        EpisodeTasks(data, ways=5)
    with pytest.raises(ValueError, match="shots \\+ queries = 4 examples per class, but in the 'train' "
                                         "split the class 0 has only 3 \\(4 classes have fewer"):
        EpisodeTasks(data, ways=2, shots=2, queries=2)
    folder = FakeImageFolder(tiny_image_folder / "train")
    with pytest.raises(ValueError, match="the class 0 \\('n0000'\\) has only 5 \\(2 classes"):
        EpisodeTasks(folder, ways=2, shots=5, queries=1)
    with pytest.raises(ValueError, match="queries must be an int >= 1"):
        EpisodeTasks(data, ways=2, shots=1, queries=0)
    tasks = EpisodeTasks(data, ways=2, shots=1, queries=1)
    with pytest.raises(ValueError, match="no 'val' split: pass val=<data set>"):
        tasks.fixed_tasks("val", 2, 2, seed=0)
    with pytest.raises(ValueError, match="split must be one of"):
        tasks.fixed_tasks("dev", 2, 2, seed=0)

    class Stream(IterableDataset):
        def __iter__(self):
            yield from ()

    with pytest.raises(TypeError, match="map-style data set .*an IterableDataset cannot be indexed"):
        EpisodeTasks(Stream())
    with pytest.raises(ValueError, match="the data set is empty"):
        EpisodeTasks(Items([]))
    with pytest.raises(ValueError, match=r"dataset\[0\] must be an \(x, y\) pair, got Tensor"):
        EpisodeTasks(Items([torch.zeros(3)] * 4))
    with pytest.raises(ValueError, match=r"dataset\[1\]: a class label must be a single value"):
        EpisodeTasks(Items([(torch.zeros(2), 0), (torch.zeros(2), torch.zeros(2))]))
    with pytest.raises(ValueError, match="targets holds 3 labels for 4 items"):
        EpisodeTasks(Items([(torch.zeros(2), 0)] * 4, targets=[0, 0, 0]))

    ragged = Items([(torch.zeros(3 if i != 5 else 4), i % 2) for i in range(8)])
    # Item 5 is the odd one out; the message names whichever of two shapes was loaded second.
    with pytest.raises(ValueError, match=r"dataset\[\d\] \(class [01]\) has shape \([34],\) but "
                                         r"earlier items have \([34],\); every item needs the same"):
        EpisodeTasks(ragged, ways=2, shots=3, queries=1).sample(4, torch.Generator())
    stale = Items([(torch.zeros(2), i % 2) for i in range(8)], targets=[1 - i % 2 for i in range(8)])
    with pytest.raises(ValueError, match="has label [01] but its targets say [01]"):
        EpisodeTasks(stale, ways=2, shots=1, queries=1).sample(1, torch.Generator())
    objects = Items([(object(), i % 2) for i in range(8)])
    with pytest.raises(TypeError, match="cannot turn a object into a tensor .* pass transform="):
        EpisodeTasks(objects, ways=2, shots=1, queries=1).sample(1, torch.Generator())

    with pytest.raises(ValueError, match="names labels the data set does not have: \\[7\\]"):
        EpisodeTasks.from_class_split(data, val_classes=[7], ways=2, shots=1, queries=1)
    with pytest.raises(ValueError, match="overlap"):
        EpisodeTasks.from_class_split(data, val_classes=[0], test_classes=[0], ways=1, shots=1,
                                      queries=1)
    with pytest.raises(ValueError, match="test_classes=9, but only 4 classes are left"):
        EpisodeTasks.from_class_split(data, test_classes=9)
    with pytest.raises(ValueError, match="no classes are left for training"):
        EpisodeTasks.from_class_split(data, test_classes=4, ways=1, shots=1, queries=1)
    with pytest.raises(TypeError, match="unknown options \\['way'\\]"):
        EpisodeTasks.from_class_split(data, test_classes=1, way=2)


def test_a_random_transform_is_caught_by_the_protocol_check():
    noisy = EpisodeTasks(blobs(), blobs(seed=1), blobs(seed=2), ways=2, shots=1, queries=1,
                         transform=lambda x: x + 0.01 * torch.randn_like(x))
    with pytest.raises(SamplerError, match="used torch's global random generator"):
        check_sampler(noisy)


# ---- meta-training ----------------------------------------------------------------------------
def test_maml_meta_trains_on_dataset_episodes(tiny_image_folder, cache):
    torch.manual_seed(0)
    sets = folder_sets(tiny_image_folder, cache)
    tasks = EpisodeTasks(sets["train"], sets["val"], ways=3, shots=1, queries=2)
    learner = Conv4(ways=3, in_shape=(3, SIZE, SIZE), filters=4)
    algorithm = build_algorithm("maml", learner, meta_batch_size=2, inner_steps=1)
    optimizer = torch.optim.Adam([p for p in algorithm.parameters() if p.requires_grad], 1e-3)
    generator = torch.Generator().manual_seed(0)
    theta_before = algorithm.theta0.detach().clone()
    for _ in range(2):
        loss, logs = algorithm.meta_loss(tasks.sample(2, generator))
        optimizer.zero_grad()
        loss.backward()
        assert torch.isfinite(loss) and algorithm.theta0.grad.abs().sum() > 0
        optimizer.step()
    assert not torch.equal(algorithm.theta0, theta_before)
    metrics = algorithm.adapt_and_evaluate(next(tasks.fixed_tasks("val", 4, 4, seed=0)), steps=1)
    assert metrics["accuracy"].shape == (4,) and ((0 <= metrics["accuracy"]) & (metrics["accuracy"] <= 1)).all()


@requires_cuda
def test_cuda_episodes_follow_a_cuda_generator():
    tasks = EpisodeTasks(blobs(), blobs(seed=1), ways=3, shots=2, queries=2, device="cuda")
    a = tasks.sample(4, torch.Generator(device="cuda").manual_seed(0))
    b = tasks.sample(4, torch.Generator(device="cuda").manual_seed(0))
    assert a.x_support.is_cuda and a.y_query.is_cuda and same(a, b)
    check_sampler(tasks)
