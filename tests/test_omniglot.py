"""Omniglot loading, caching, class splits, rotations and episodes, on a generated release and (when
present) on the real data in ../shared/data/omniglot."""

from __future__ import annotations

import time
import zipfile

import pytest
import torch

from learnedopt.tasks import OmniglotTasks, TaskBatch, image_cache
from learnedopt.tasks.omniglot import load_omniglot_set
from tests.fewshot_data import (REAL_OMNIGLOT, TINY_BACKGROUND, TINY_DRAWINGS, TINY_EVALUATION,
                                TINY_SMALL1, character_code, drawing_code, tiny_characters,
                                tiny_omniglot)  # noqa: F401 (fixture)

CODE_TO_CHAR = {character_code(i): c for i, c in enumerate(tiny_characters())}
CODE_TO_DRAWING = {drawing_code(d): d for d in range(TINY_DRAWINGS)}
N_BACKGROUND = sum(TINY_BACKGROUND.values())
N_EVALUATION = sum(TINY_EVALUATION.values())


def read_image(x: torch.Tensor, side: int = 28) -> tuple[str, int, int]:
    """(character, drawing, quarter turns counter-clockwise) of one generated (1, S, S) image."""
    q, h = side // 4, 3 * side // 4
    # Quadrant centres in counter-clockwise order: where a quadrant lands after k quarter turns is
    # k steps further along this cycle.
    cycle = [(q, q), (h, q), (h, h), (q, h)]  # top-left, bottom-left, bottom-right, top-right
    values = [round(float(x[0, r, c]) * 255) for r, c in cycle]
    turns = values.index(255) - 1  # the marker starts bottom-left (cycle position 1)
    assert values[(2 + turns) % 4] == 0, f"corner markers inconsistent: {values}"
    char, draw = values[turns % 4], values[(3 + turns) % 4]
    assert char in CODE_TO_CHAR and draw in CODE_TO_DRAWING, f"unexpected pixel codes {values}"
    return CODE_TO_CHAR[char], CODE_TO_DRAWING[draw], turns % 4


def read_task(batch: TaskBatch, b: int, side: int = 28):
    support = [read_image(x, side) for x in batch.x_support[b]]
    query = [read_image(x, side) for x in batch.x_query[b]]
    return support, batch.y_support[b].tolist(), query, batch.y_query[b].tolist()


@pytest.fixture(scope="session")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("omniglot-cache")


def tasks(tiny_omniglot, cache, **kw) -> OmniglotTasks:
    kw.setdefault("queries", 2)
    return OmniglotTasks(tiny_omniglot["zips"], cache_dir=cache, **kw)


# ---- loading and caching -------------------------------------------------------------------

def test_zip_and_folder_decode_to_the_same_images(tiny_omniglot, cache):
    from_zip = load_omniglot_set(tiny_omniglot["zips"], "images_background", 28, cache)
    from_folder = load_omniglot_set(tiny_omniglot["folders"], "images_background", 28, cache)
    assert from_zip.characters == from_folder.characters == tiny_characters()[:N_BACKGROUND]
    assert from_zip.counts == [TINY_DRAWINGS] * N_BACKGROUND
    assert from_zip.images.dtype == torch.uint8
    assert from_zip.images.shape == (N_BACKGROUND * TINY_DRAWINGS, 1, 28, 28)
    assert torch.equal(from_zip.images, from_folder.images)
    # Images are in character order, drawings in file order, ink high and unrotated.
    decoded = [read_image(x.float() / 255) for x in from_zip.images]
    expected = [(c, d, 0) for c in from_zip.characters for d in range(TINY_DRAWINGS)]
    assert decoded == expected


def test_image_size_is_configurable(tiny_omniglot, cache):
    s = load_omniglot_set(tiny_omniglot["zips"], "images_evaluation", 84, cache)
    assert s.images.shape == (N_EVALUATION * TINY_DRAWINGS, 1, 84, 84)
    assert read_image(s.images[0].float() / 255, 84) == (s.characters[0], 0, 0)


def test_second_load_reads_the_cache_without_decoding(tiny_omniglot, tmp_path, monkeypatch):
    first = load_omniglot_set(tiny_omniglot["zips"], "images_evaluation", 28, tmp_path)
    files = list(tmp_path.glob("omniglot-images_evaluation-28px-*.pt"))
    assert len(files) == 1
    blob = torch.load(files[0], weights_only=True)
    assert blob["images"].dtype == torch.uint8 and torch.equal(blob["images"], first.images)

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although a valid cache exists")
    monkeypatch.setattr(image_cache, "decode_images", no_decoding)
    second = load_omniglot_set(tiny_omniglot["zips"], "images_evaluation", 28, tmp_path)
    assert torch.equal(second.images, first.images) and second.characters == first.characters
    # Another image size is another cache entry, hence a decode.
    with pytest.raises(AssertionError, match="decoded although"):
        load_omniglot_set(tiny_omniglot["zips"], "images_evaluation", 32, tmp_path)


def test_cache_key_follows_the_source_files(tiny_omniglot, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    src = tiny_omniglot["zips"] / "images_evaluation.zip"
    (root / "images_evaluation.zip").write_bytes(src.read_bytes())
    load_omniglot_set(root, "images_evaluation", 28, tmp_path / "c")
    # Drop one drawing: the archive changed, so the old cache must not be used.
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(root / "images_evaluation.zip", "w") as zout:
        for info in zin.infolist()[:-1]:
            zout.writestr(info, zin.read(info))
    changed = load_omniglot_set(root, "images_evaluation", 28, tmp_path / "c")
    assert len(list((tmp_path / "c").glob("*.pt"))) == 2
    assert changed.images.shape[0] == N_EVALUATION * TINY_DRAWINGS - 1


def test_a_corrupt_cache_is_rebuilt(tiny_omniglot, tmp_path):
    first = load_omniglot_set(tiny_omniglot["zips"], "images_evaluation", 28, tmp_path)
    (cache_file,) = tmp_path.glob("*.pt")
    cache_file.write_bytes(b"not a tensor file")
    again = load_omniglot_set(tiny_omniglot["zips"], "images_evaluation", 28, tmp_path)
    assert torch.equal(again.images, first.images)
    assert torch.load(cache_file, weights_only=True)["images"].shape == first.images.shape


def test_default_cache_dir_is_inside_the_data_root(tiny_omniglot, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "images_evaluation.zip").write_bytes(
        (tiny_omniglot["zips"] / "images_evaluation.zip").read_bytes())
    load_omniglot_set(root, "images_evaluation", 28)
    assert len(list((root / ".learnedopt-cache").glob("omniglot-*.pt"))) == 1


def test_pool_decoding_matches_serial(tiny_omniglot, monkeypatch):
    monkeypatch.setattr(image_cache, "_POOL_MIN_IMAGES", 1)
    refs_root = tiny_omniglot["zips"]
    pooled = load_omniglot_set(refs_root, "images_evaluation", 28, use_cache=False, workers=2)
    serial = load_omniglot_set(refs_root, "images_evaluation", 28, use_cache=False, workers=1)
    assert torch.equal(pooled.images, serial.images)


# ---- splits and rotations ------------------------------------------------------------------

def split_characters(t: OmniglotTasks, split: str) -> set[str]:
    return {name.rsplit("/", 1)[0] for name in t.pool(split).class_names}


def test_vinyals_split(tiny_omniglot, cache):
    t = tasks(tiny_omniglot, cache, split="vinyals")
    assert t.config()["classes"] == {"train": 39 * 4, "val": 13 * 4, "test": N_EVALUATION * 4}
    assert all(c.startswith("Alpha3/") for c in split_characters(t, "val"))
    assert all(c.startswith("Eval") for c in split_characters(t, "test"))
    without = tasks(tiny_omniglot, cache, split="vinyals", rotations=False)
    assert without.config()["classes"] == {"train": 39, "val": 13, "test": N_EVALUATION}


def test_maml_split_is_a_seeded_partition(tiny_omniglot, cache):
    t = tasks(tiny_omniglot, cache, split="maml", train_characters=40, val_characters=8)
    parts = [split_characters(t, s) for s in ("train", "val", "test")]
    assert [len(p) for p in parts] == [32, 8, N_BACKGROUND + N_EVALUATION - 40]
    assert set().union(*parts) == set(tiny_characters())
    assert sum(len(p) for p in parts) == len(set().union(*parts))  # disjoint
    assert t.config()["classes"]["train"] == 32 * 4
    same = tasks(tiny_omniglot, cache, split="maml", train_characters=40, val_characters=8)
    assert [split_characters(same, s) for s in ("train", "val", "test")] == parts
    other = tasks(tiny_omniglot, cache, split="maml", train_characters=40, val_characters=8,
                  split_seed=2)
    assert split_characters(other, "test") != parts[2]
    # Without held-out validation characters there is no "val" split to ask for.
    none_held = tasks(tiny_omniglot, cache, split="maml", train_characters=40, val_characters=0)
    with pytest.raises(ValueError, match="no 'val' classes"):
        none_held.fixed_tasks("val", 4, 2, seed=0)


def test_lake_split_background_to_evaluation(tiny_omniglot, cache):
    t = tasks(tiny_omniglot, cache, split="lake", rotations=False, val_alphabets=[])
    assert split_characters(t, "train") == set(tiny_characters()[:N_BACKGROUND])
    assert split_characters(t, "test") == set(tiny_characters()[N_BACKGROUND:])
    small = tasks(tiny_omniglot, cache, split="lake", rotations=False,
                  background="images_background_small1", val_characters=2, ways=2)
    assert len(split_characters(small, "train")) == sum(TINY_SMALL1.values()) - 2
    assert len(split_characters(small, "val")) == 2


def test_lake_split_validates_on_held_out_alphabets(tiny_omniglot, cache):
    t = tasks(tiny_omniglot, cache, split="lake", rotations=False, ways=5,
              val_alphabets=["Alpha1", "Alpha3"])
    alphabets = {name: {c.split("/")[0] for c in split_characters(t, name)}
                 for name in ("train", "val", "test")}
    assert alphabets == {"train": {"Alpha0", "Alpha2"}, "val": {"Alpha1", "Alpha3"},
                         "test": {"Eval0", "Eval1"}}
    assert len(split_characters(t, "val")) == 2 * TINY_BACKGROUND["Alpha1"]
    assert t.config()["val_alphabets"] == ["Alpha1", "Alpha3"]
    check_label_consistency(next(t.fixed_tasks("val", 3, 3, seed=0)), 5)
    # The default names the real background alphabets: a release without them is refused, named.
    with pytest.raises(ValueError, match=r"validation alphabet\(s\) \['Bengali'"):
        tasks(tiny_omniglot, cache, split="lake", rotations=False)
    with pytest.raises(ValueError, match="not both"):
        tasks(tiny_omniglot, cache, split="lake", val_alphabets=["Alpha1"], val_characters=3)
    with pytest.raises(ValueError, match="split='lake' only"):
        tasks(tiny_omniglot, cache, split="maml", train_characters=40, val_alphabets=["Alpha1"])
    with pytest.raises(ValueError, match="list of alphabet names"):
        tasks(tiny_omniglot, cache, split="lake", val_alphabets="Alpha1")
    # Without validation classes, asking for them says how to get some.
    none = tasks(tiny_omniglot, cache, split="lake", rotations=False, val_alphabets=[])
    with pytest.raises(ValueError, match="val_alphabets"):
        none.fixed_tasks("val", 2, 2, seed=0)


def test_within_alphabet_tasks_use_one_alphabet(tiny_omniglot, cache):
    t = tasks(tiny_omniglot, cache, split="lake", rotations=False, ways=5, shots=1,
              within_alphabet=True, val_alphabets=[])
    check_label_consistency(next(t.fixed_tasks("test", 4, 4, seed=0)), 5)
    batch = t.sample(8, torch.Generator().manual_seed(0))
    for b in range(8):
        support, *_ = read_task(batch, b)
        assert len({c.split("/")[0] for c, _, _ in support}) == 1
    # Evaluation alphabets have 5 characters each: a 6-way within-alphabet task is impossible.
    with pytest.raises(ValueError, match="no group of the 'test' split has 6 classes"):
        tasks(tiny_omniglot, cache, split="lake", rotations=False, ways=6,
              within_alphabet=True, val_alphabets=[]).fixed_tasks("test", 2, 2, seed=0)


def test_rotations_are_quarter_turns_counter_clockwise(tiny_omniglot, cache):
    t = tasks(tiny_omniglot, cache, split="vinyals", ways=20, shots=1, queries=1)
    batch = t.sample(16, torch.Generator().manual_seed(1))
    seen = set()
    for b in range(16):
        support, *_ = read_task(batch, b)
        seen |= {turns for _, _, turns in support}
    assert seen == {0, 1, 2, 3}  # read_image would fail on anything but exact quarter turns


def test_rotated_classes_hold_rotated_copies(tiny_omniglot, cache):
    pool = tasks(tiny_omniglot, cache, split="vinyals").pool("train")
    names = pool.class_names
    for turns in (1, 2, 3):
        rotated = names.index(f"Alpha1/character03/rot{90 * turns:03d}")
        upright = names.index("Alpha1/character03/rot000")
        assert torch.equal(pool.class_images(rotated),
                           torch.rot90(pool.class_images(upright), turns, dims=(-2, -1)))


# ---- episodes --------------------------------------------------------------------------------

@pytest.mark.parametrize("ways,shots,queries", [(5, 1, 2), (20, 5, 1), (3, 2, 0)])
def test_episode_shapes_dtypes_and_labels(tiny_omniglot, cache, ways, shots, queries):
    t = tasks(tiny_omniglot, cache, ways=ways, shots=shots, queries=queries)
    assert t.kind == "classification" and t.num_classes == ways
    batch = t.sample(3, torch.Generator().manual_seed(0))
    assert batch.x_support.shape == (3, ways * shots, 1, 28, 28)
    assert batch.x_query.shape == (3, ways * queries, 1, 28, 28)
    assert batch.x_support.dtype == torch.float32 and batch.y_support.dtype == torch.int64
    assert 0.0 <= float(batch.x_support.min()) and float(batch.x_support.max()) <= 1.0
    expected = torch.arange(ways).repeat_interleave(shots)
    assert torch.equal(batch.y_support, expected.expand(3, -1))
    assert torch.equal(batch.y_query, torch.arange(ways).repeat_interleave(queries).expand(3, -1))


def check_label_consistency(batch: TaskBatch, ways: int):
    for b in range(batch.num_tasks):
        support, ys, query, yq = read_task(batch, b)
        class_of_label: dict[int, tuple[str, int]] = {}
        drawings: dict[int, list[int]] = {}
        for (char, draw, turns), y in zip(support + query, ys + yq):
            assert class_of_label.setdefault(y, (char, turns)) == (char, turns)
            drawings.setdefault(y, []).append(draw)
        assert sorted(class_of_label) == list(range(ways))
        assert len(set(class_of_label.values())) == ways  # distinct classes within a task
        for draws in drawings.values():
            assert len(draws) == len(set(draws))  # no image both in support and query


def test_support_and_query_of_a_class_share_its_label(tiny_omniglot, cache):
    t = tasks(tiny_omniglot, cache, ways=10, shots=2, queries=3)
    check_label_consistency(t.sample(6, torch.Generator().manual_seed(3)), 10)
    check_label_consistency(next(t.fixed_tasks("test", 4, 4, seed=0)), 10)


def test_two_hundred_way_episodes(tiny_omniglot, cache):
    t = tasks(tiny_omniglot, cache, split="lake", ways=200, shots=1, queries=1, val_alphabets=[])
    batch = t.sample(2, torch.Generator().manual_seed(0))
    assert batch.x_support.shape == (2, 200, 1, 28, 28)
    check_label_consistency(batch, 200)
    with pytest.raises(ValueError, match="at least 209 classes, the 'train' split has 208"):
        tasks(tiny_omniglot, cache, split="lake", ways=209, shots=1, queries=1, val_alphabets=[])
    # The evaluation characters cannot serve 200-way tasks: an error naming the split, on use.
    with pytest.raises(ValueError, match="the 'test' split has 40"):
        t.fixed_tasks("test", 2, 2, seed=0)


def test_same_seed_same_episodes(tiny_omniglot, cache):
    t = tasks(tiny_omniglot, cache, ways=5, shots=1)
    a = t.sample(4, torch.Generator().manual_seed(7))
    b = t.sample(4, torch.Generator().manual_seed(7))
    c = t.sample(4, torch.Generator().manual_seed(8))
    assert torch.equal(a.x_support, b.x_support) and torch.equal(a.x_query, b.x_query)
    assert not torch.equal(a.x_support, c.x_support)
    val1 = [x.x_query for x in t.fixed_tasks("val", 6, 4, seed=0)]
    val2 = [x.x_query for x in t.fixed_tasks("val", 6, 4, seed=0)]
    assert [v.shape[0] for v in val1] == [4, 2]
    assert all(torch.equal(p, q) for p, q in zip(val1, val2))
    test = next(t.fixed_tasks("test", 4, 4, seed=0))
    assert {read_image(x)[0] for x in test.x_support.flatten(0, 1)} <= \
        split_characters(t, "test")


def test_sample_flat_labels_name_the_training_class(tiny_omniglot, cache):
    t = tasks(tiny_omniglot, cache, split="vinyals")
    x, y, num_labels = t.sample_flat(64, torch.Generator().manual_seed(0))
    assert x.shape == (64, 1, 28, 28) and y.dtype == torch.int64 and num_labels == 39 * 4
    names = t.pool("train").class_names
    for image, label in zip(x, y.tolist()):
        char, _, turns = read_image(image)
        assert names[label] == f"{char}/rot{90 * turns:03d}"


# ---- bad input -------------------------------------------------------------------------------

def test_clear_errors_for_bad_data_roots(tiny_omniglot, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        OmniglotTasks(tmp_path / "nowhere", cache_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="images_background.zip"):
        OmniglotTasks(tmp_path, cache_dir=tmp_path)
    (tmp_path / "images_background.zip").write_bytes(b"this is not a zip")
    with pytest.raises(ValueError, match="not a readable zip"):
        OmniglotTasks(tmp_path, cache_dir=tmp_path)
    with zipfile.ZipFile(tmp_path / "images_background.zip", "w") as z:
        z.writestr("images_background/readme.txt", "no drawings here")
    with pytest.raises(ValueError, match="holds no PNG drawings"):
        OmniglotTasks(tmp_path, cache_dir=tmp_path)
    with zipfile.ZipFile(tmp_path / "images_background.zip", "w") as z:
        z.writestr("images_background/A/character01/0001_01.png", b"\x89PNG broken")
    with pytest.raises(ValueError, match="cannot decode image .*0001_01.png"):
        load_omniglot_set(tmp_path, "images_background", use_cache=False)


def test_clear_errors_for_bad_protocols(tiny_omniglot, cache, tmp_path):
    with pytest.raises(ValueError, match="split must be one of"):
        tasks(tiny_omniglot, cache, split="random")
    with pytest.raises(ValueError, match="smallest class of the 'train' split has only 6"):
        tasks(tiny_omniglot, cache, shots=5, queries=2)
    with pytest.raises(ValueError, match="val_characters applies"):
        tasks(tiny_omniglot, cache, split="vinyals", val_characters=10)
    with pytest.raises(ValueError, match="train_characters must be in"):
        tasks(tiny_omniglot, cache, split="maml", train_characters=5000)
    t = tasks(tiny_omniglot, cache)
    with pytest.raises(ValueError, match="split must be 'train', 'val' or 'test'"):
        t.fixed_tasks("validation", 4, 2, seed=0)
    # A Vinyals split without its split files.
    root = tmp_path / "nosplits"
    root.mkdir()
    for name in ("images_background.zip", "images_evaluation.zip"):
        (root / name).write_bytes((tiny_omniglot["zips"] / name).read_bytes())
    with pytest.raises(FileNotFoundError, match="Vinyals split file"):
        OmniglotTasks(root, cache_dir=cache)
    (root / "splits" / "vinyals").mkdir(parents=True)
    for name in ("train", "val", "test"):
        (root / "splits" / "vinyals" / f"{name}.txt").write_text("Alpha0/character01/rot045\n")
    with pytest.raises(ValueError, match="train.txt:1: expected"):
        OmniglotTasks(root, cache_dir=cache)


# ---- the real data ---------------------------------------------------------------------------

real = pytest.mark.skipif(not (REAL_OMNIGLOT / "images_background.zip").is_file(),
                          reason=f"real Omniglot not found at {REAL_OMNIGLOT}")


@pytest.fixture(scope="session")
def real_cache(tmp_path_factory):
    """One decode of the real archives per test session, shared by the real-data tests."""
    folder = tmp_path_factory.mktemp("real-omniglot-cache")
    start = time.perf_counter()
    for name in ("images_background", "images_evaluation"):
        load_omniglot_set(REAL_OMNIGLOT, name, 28, folder)
    print(f"\nreal Omniglot decoded and cached in {time.perf_counter() - start:.1f} s")
    return folder


@real
def test_real_background_and_evaluation_sets(real_cache):
    background = load_omniglot_set(REAL_OMNIGLOT, "images_background", 28, real_cache)
    evaluation = load_omniglot_set(REAL_OMNIGLOT, "images_evaluation", 28, real_cache)
    assert len(background.characters) == 964 and len(evaluation.characters) == 659
    assert len({c.split("/")[0] for c in background.characters}) == 30
    assert len({c.split("/")[0] for c in evaluation.characters}) == 20
    assert set(background.counts) == set(evaluation.counts) == {20}
    # Inverted: strokes are the minority of bright pixels on a dark background.
    assert float(background.images.float().mean()) / 255 < 0.25


@real
def test_real_vinyals_split(real_cache):
    t = OmniglotTasks(REAL_OMNIGLOT, cache_dir=real_cache)
    assert t.config()["classes"] == {"train": 1028 * 4, "val": 172 * 4, "test": 423 * 4}
    assert len(split_characters(t, "train")) == 1028
    assert len(split_characters(t, "test")) == 423


@real
def test_real_maml_split(real_cache):
    t = OmniglotTasks(REAL_OMNIGLOT, split="maml", cache_dir=real_cache)
    counts = [len(split_characters(t, s)) for s in ("train", "val", "test")]
    assert counts == [980, 220, 423]


@real
def test_real_lake_split_holds_out_five_background_alphabets(real_cache):
    from learnedopt.tasks.omniglot import LAKE_VAL_ALPHABETS
    t = OmniglotTasks(REAL_OMNIGLOT, split="lake", rotations=False, within_alphabet=True,
                      ways=20, cache_dir=real_cache)
    val = split_characters(t, "val")
    assert {c.split("/")[0] for c in val} == set(LAKE_VAL_ALPHABETS)
    assert len(val) == 167 and len(split_characters(t, "train")) == 964 - 167
    assert not val & split_characters(t, "train")
    # Every held-out alphabet is big enough for within-alphabet 20-way validation tasks.
    next(t.fixed_tasks("val", 2, 2, seed=0))


@real
@pytest.mark.parametrize("ways,shots", [(5, 1), (20, 5)])
def test_real_episodes(real_cache, ways, shots):
    t = OmniglotTasks(REAL_OMNIGLOT, ways=ways, shots=shots, queries=5, cache_dir=real_cache)
    batch = t.sample(4, torch.Generator().manual_seed(0))
    assert batch.x_support.shape == (4, ways * shots, 1, 28, 28)
    assert batch.x_query.shape == (4, ways * 5, 1, 28, 28)
    assert torch.equal(batch.y_query[0], torch.arange(ways).repeat_interleave(5))
    # Distinct drawings: no support image repeats inside a task.
    flat = batch.x_support[0].flatten(1)
    assert torch.cdist(flat, flat).add(torch.eye(len(flat))).min() > 0


def test_config_is_json_and_names_the_protocol(tiny_omniglot, cache):
    import json
    t = tasks(tiny_omniglot, cache, split="maml", train_characters=40, val_characters=8, ways=3,
              shots=2)
    config = json.loads(json.dumps(t.config()))
    assert config["task"] == "omniglot" and config["split"] == "maml"
    assert (config["ways"], config["shots"], config["queries"]) == (3, 2, 2)
    assert config["train_characters"] == 40 and config["val_characters"] == 8
    assert config["rotations"] is True and config["image_size"] == 28
