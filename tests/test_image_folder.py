"""Image-folder data sets (miniImageNet / CUB layouts) on a generated tree of solid-colour images
whose red channel names the class and green channel the example."""

from __future__ import annotations

import shutil

import pytest
import torch

from learnedopt.tasks import ImageFolderTasks, TaskBatch, image_cache
from learnedopt.tasks.image_folder import load_split
from tests.fewshot_data import (TINY_FOLDER_CLASSES, folder_class_code, folder_example_code,
                                tiny_image_folder)  # noqa: F401 (fixture)


def read_image(x: torch.Tensor, split: str) -> tuple[int, int]:
    """(class index, example index) of one generated (3, S, S) image; tolerant of JPEG rounding."""
    red, green, blue = (round(float(x[c].mean()) * 255) for c in range(3))
    assert abs(blue - 128) <= 3, f"not a generated image: blue {blue}"
    classes = [c for c in range(len(TINY_FOLDER_CLASSES[split]))
               if abs(folder_class_code(split, c) - red) <= 3]
    examples = [e for e in range(8) if abs(folder_example_code(e) - green) <= 3]
    assert len(classes) == 1 and len(examples) == 1, f"unexpected colour {(red, green, blue)}"
    return classes[0], examples[0]


@pytest.fixture(scope="session")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("folder-cache")


def tasks(root, cache, **kw) -> ImageFolderTasks:
    kw.setdefault("image_size", 16)
    kw.setdefault("queries", 2)
    return ImageFolderTasks(root, cache_dir=cache, **kw)


def check_task_labels(batch: TaskBatch, split: str, ways: int):
    for b in range(batch.num_tasks):
        class_of_label, examples = {}, {}
        for x, y in zip(torch.cat([batch.x_support[b], batch.x_query[b]]),
                        torch.cat([batch.y_support[b], batch.y_query[b]]).tolist()):
            cls, example = read_image(x, split)
            assert class_of_label.setdefault(y, cls) == cls
            examples.setdefault(y, []).append(example)
        assert sorted(class_of_label) == list(range(ways))
        assert len(set(class_of_label.values())) == ways
        assert all(len(e) == len(set(e)) for e in examples.values())


def test_loads_each_split_with_its_classes(tiny_image_folder, cache):
    pool = load_split(tiny_image_folder, "train", 16, cache)
    counts = TINY_FOLDER_CLASSES["train"]
    assert pool.images.dtype == torch.uint8 and pool.images.shape == (sum(counts), 3, 16, 16)
    assert pool.class_count.tolist() == counts and pool.class_names[0] == "n0000"
    decoded = [read_image(x.float() / 255, "train") for x in pool.images]
    assert decoded == [(c, e) for c, n in enumerate(counts) for e in range(n)]


def test_episodes_shapes_labels_and_consistency(tiny_image_folder, cache):
    t = tasks(tiny_image_folder, cache, ways=4, shots=2, queries=3)
    assert t.kind == "classification" and t.num_classes == 4
    batch = t.sample(5, torch.Generator().manual_seed(0))
    assert batch.x_support.shape == (5, 8, 3, 16, 16) and batch.x_query.shape == (5, 12, 3, 16, 16)
    assert batch.x_support.dtype == torch.float32 and batch.y_query.dtype == torch.int64
    assert torch.equal(batch.y_support, torch.arange(4).repeat_interleave(2).expand(5, -1))
    check_task_labels(batch, "train", 4)
    # Classes hold 5 to 8 images: examples past a class's own count must never be drawn.
    many = t.sample(64, torch.Generator().manual_seed(1))
    check_task_labels(many, "train", 4)


def test_fixed_tasks_are_seeded_and_use_their_split(tiny_image_folder, cache):
    t = tasks(tiny_image_folder, cache, ways=3, shots=1)
    a = list(t.fixed_tasks("test", 5, 2, seed=3))
    b = list(t.fixed_tasks("test", 5, 2, seed=3))
    assert [x.num_tasks for x in a] == [2, 2, 1]
    assert all(torch.equal(p.x_query, q.x_query) for p, q in zip(a, b))
    for batch in a:
        check_task_labels(batch, "test", 3)
    check_task_labels(next(t.fixed_tasks("val", 2, 2, seed=3)), "val", 3)
    other = next(t.fixed_tasks("test", 2, 2, seed=4))
    assert not torch.equal(other.x_support, a[0].x_support)
    assert t.config()["classes"] == {"train": 6, "val": 3, "test": 3}


def test_same_generator_state_same_episodes(tiny_image_folder, cache):
    t = tasks(tiny_image_folder, cache)
    a = t.sample(3, torch.Generator().manual_seed(11))
    b = t.sample(3, torch.Generator().manual_seed(11))
    assert torch.equal(a.x_support, b.x_support) and torch.equal(a.x_query, b.x_query)


def test_sample_flat_labels(tiny_image_folder, cache):
    t = tasks(tiny_image_folder, cache)
    x, y, num_labels = t.sample_flat(40, torch.Generator().manual_seed(0))
    assert x.shape == (40, 3, 16, 16) and num_labels == 6
    assert [read_image(img, "train")[0] for img in x] == y.tolist()


def test_second_load_reads_the_cache(tiny_image_folder, tmp_path, monkeypatch):
    first = tasks(tiny_image_folder, tmp_path)
    assert len(list(tmp_path.glob("imagefolder-tinyimagenet-train-16px-*.pt"))) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although a valid cache exists")
    monkeypatch.setattr(image_cache, "decode_images", no_decoding)
    second = tasks(tiny_image_folder, tmp_path)
    assert torch.equal(first.pool("train").images, second.pool("train").images)


def test_ravi_csv_layout_and_split_dirs(tiny_image_folder, tmp_path, cache):
    root = tmp_path / "mini"
    (root / "images").mkdir(parents=True)
    rows = ["filename,label"]
    for folder in sorted((tiny_image_folder / "train").iterdir()):
        for img in sorted(folder.iterdir()):
            shutil.copy(img, root / "images" / f"{folder.name}_{img.name}")
            rows.append(f"{folder.name}_{img.name},{folder.name}")
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    t = tasks(root, cache, ways=3, split_dirs={"test": tiny_image_folder / "val"})
    csv_pool = t.pool("train")
    folder_pool = load_split(tiny_image_folder, "train", 16, cache)
    assert csv_pool.class_names == folder_pool.class_names
    assert torch.equal(csv_pool.images, folder_pool.images)
    check_task_labels(next(t.fixed_tasks("test", 2, 2, seed=0)), "val", 3)
    with pytest.raises(FileNotFoundError, match="no 'val' split"):
        t.fixed_tasks("val", 2, 2, seed=0)


def test_clear_errors(tiny_image_folder, tmp_path, cache):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageFolderTasks(tmp_path / "nowhere", cache_dir=cache)
    with pytest.raises(FileNotFoundError, match="no 'train' split"):
        ImageFolderTasks(tmp_path, cache_dir=cache)
    (tmp_path / "train" / "empty_class").mkdir(parents=True)
    with pytest.raises(ValueError, match="holds no classes"):
        ImageFolderTasks(tmp_path, cache_dir=cache)
    (tmp_path / "train" / "empty_class" / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="cannot decode image .*bad.jpg"):
        ImageFolderTasks(tmp_path, cache_dir=cache)
    with pytest.raises(ValueError, match="smallest class of the 'train' split has only 5"):
        tasks(tiny_image_folder, cache, shots=4, queries=2)
    with pytest.raises(ValueError, match="at least 7 classes, the 'train' split has 6"):
        tasks(tiny_image_folder, cache, ways=7)
    with pytest.raises(ValueError, match="split_dirs keys"):
        tasks(tiny_image_folder, cache, split_dirs={"novel": tmp_path})
    t = tasks(tiny_image_folder, cache)
    with pytest.raises(ValueError, match="split must be one of"):
        t.fixed_tasks("train_val", 2, 2, seed=0)


def test_class_pool_rejects_inconsistent_records():
    from learnedopt.tasks import ClassPool
    images = torch.zeros(6, 1, 4, 4, dtype=torch.uint8)
    start, count = torch.tensor([0, 3]), torch.tensor([3, 3])
    assert ClassPool(images, start, count, ["a", "b"]).num_classes == 2
    with pytest.raises(ValueError, match="images must be uint8"):
        ClassPool(images.float(), start, count, ["a", "b"])
    with pytest.raises(ValueError, match="class_count must be int64 of shape \\(2,\\)"):
        ClassPool(images, start, count.int(), ["a", "b"])
    with pytest.raises(ValueError, match="consecutive blocks"):
        ClassPool(images, torch.tensor([0, 2]), count, ["a", "b"])
    with pytest.raises(ValueError, match="consecutive blocks"):
        ClassPool(images, torch.tensor([0, 2]), torch.tensor([2, 2]), ["a", "b"])
