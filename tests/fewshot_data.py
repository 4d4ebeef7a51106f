"""Tiny generated few-shot data sets laid out like the real releases, as session fixtures (a test
module imports the fixtures it uses), and the real Omniglot's location."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
REAL_OMNIGLOT = REPO_ROOT / ".." / "shared" / "data" / "omniglot"

# Generated Omniglot: every drawing is four flat quadrants whose (inverted, i.e. ink) values say
# what it is: top-left the character's code, top-right the drawing's code, bottom-right 0 and
# bottom-left 255. Flat regions survive resizing exactly, and the 0/255 corners reveal the
# rotation, so a test can read identity and rotation back from any sampled image.
TINY_BACKGROUND = {f"Alpha{a}": 13 for a in range(4)}   # 52 characters, 208 rotated classes
TINY_EVALUATION = {f"Eval{a}": 5 for a in range(2)}     # 10 characters
TINY_SMALL1 = {"Alpha0": 4, "Alpha1": 3}                # a "minimal" subset of the background
TINY_DRAWINGS = 6
TINY_SIDE = 105


def tiny_characters() -> list[str]:
    """Every generated character, "Alphabet/characterNN", in the order that defines its code."""
    return [f"{alpha}/character{c + 1:02d}" for spec in (TINY_BACKGROUND, TINY_EVALUATION)
            for alpha, n in spec.items() for c in range(n)]


def character_code(index: int) -> int:
    return 10 + 3 * index


def drawing_code(drawing: int) -> int:
    return 200 + 8 * drawing


def _drawing_png(char_code: int, draw_code: int):
    from PIL import Image
    ink = Image.new("L", (TINY_SIDE, TINY_SIDE))
    half = TINY_SIDE // 2
    for (x0, y0), value in (((0, 0), char_code), ((half, 0), draw_code), ((half, half), 0),
                            ((0, half), 255)):
        ink.paste(value, (x0, y0, TINY_SIDE if x0 else half, TINY_SIDE if y0 else half))
    return ink.point(lambda v: 255 - v)  # the release draws black ink on white paper


def _write_set(folder: Path, spec: dict[str, int]) -> None:
    codes = {c: character_code(i) for i, c in enumerate(tiny_characters())}
    for alpha, n in spec.items():
        for c in range(n):
            char = f"{alpha}/character{c + 1:02d}"
            out = folder / char
            out.mkdir(parents=True)
            for d in range(TINY_DRAWINGS):
                _drawing_png(codes[char], drawing_code(d)).save(out / f"{c + 1:04d}_{d + 1:02d}.png")


def _zip_folder(folder: Path, archive: Path) -> None:
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as z:
        z.write(folder, folder.name + "/")
        for path in sorted(folder.rglob("*")):
            z.write(path, path.relative_to(folder.parent).as_posix() + ("/" if path.is_dir() else ""))


def _write_vinyals(root: Path) -> None:
    chars = tiny_characters()
    split_of = {"train": [c for c in chars if c.split("/")[0] in ("Alpha0", "Alpha1", "Alpha2")],
                "val": [c for c in chars if c.startswith("Alpha3/")],
                "test": [c for c in chars if c.startswith("Eval")]}
    folder = root / "splits" / "vinyals"
    folder.mkdir(parents=True)
    for name, members in split_of.items():
        (folder / f"{name}.txt").write_text(
            "".join(f"{c}/rot{r:03d}\n" for c in members for r in (0, 90, 180, 270)))


@pytest.fixture(scope="session")
def tiny_omniglot(tmp_path_factory) -> dict[str, Path]:
    """{"zips": root with the release zips, "folders": root with them extracted}."""
    base = tmp_path_factory.mktemp("omniglot")
    folders, zips = base / "folders", base / "zips"
    for name, spec in (("images_background", TINY_BACKGROUND),
                       ("images_evaluation", TINY_EVALUATION),
                       ("images_background_small1", TINY_SMALL1)):
        _write_set(folders / name, spec)
        zips.mkdir(exist_ok=True)
        _zip_folder(folders / name, zips / f"{name}.zip")
    _write_vinyals(folders)
    shutil.copytree(folders / "splits", zips / "splits")
    return {"zips": zips, "folders": folders}


# Generated image folders: solid RGB images, red = class code, green = example code, blue = 128,
# in assorted sizes and formats so that resizing and decoding are exercised.
TINY_FOLDER_CLASSES = {"train": [5, 6, 7, 5, 8, 6], "val": [5, 5, 6], "test": [6, 5, 5]}


def folder_class_code(split: str, index: int) -> int:
    return 16 + 24 * index + {"train": 0, "val": 8, "test": 16}[split]


def folder_example_code(example: int) -> int:
    return 20 + 24 * example


@pytest.fixture(scope="session")
def tiny_image_folder(tmp_path_factory) -> Path:
    from PIL import Image
    root = tmp_path_factory.mktemp("imagefolder") / "tinyimagenet"
    sizes = [(50, 40), (30, 30), (24, 36)]
    for split, counts in TINY_FOLDER_CLASSES.items():
        for c, count in enumerate(counts):
            folder = root / split / f"n{c:04d}"
            folder.mkdir(parents=True)
            for e in range(count):
                img = Image.new("RGB", sizes[(c + e) % 3],
                                (folder_class_code(split, c), folder_example_code(e), 128))
                suffix = ".jpg" if c == 1 else ".png"  # one class of JPEGs per split
                img.save(folder / f"img{e:03d}{suffix}", quality=95)
    return root
