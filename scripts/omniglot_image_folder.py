"""Lays out Omniglot characters as an image folder (<out>/<split>/<class>/*.png), the layout of
miniImageNet and CUB copies that `--task images` reads, for runs and benchmarks on a machine that
has Omniglot but no miniImageNet (bench/byom.py's ResNet-12 short runs, scripts/resnet12_short_run.sh).

    python3 scripts/omniglot_image_folder.py --omniglot ../shared/data/omniglot --out runs/omniglot-folder

Classes, in sorted order of alphabet/character: train = the first --train characters of the
background set, val = the next --val, test = the first --test of the evaluation set (disjoint
alphabets from train and val); 20 drawings each. Existing output is reused when complete.
"""

from __future__ import annotations

import argparse
import sys
import zipfile
from pathlib import Path


def characters(archive: zipfile.ZipFile) -> dict[str, list[str]]:
    """alphabet/character -> its PNG members, sorted."""
    found: dict[str, list[str]] = {}
    for name in archive.namelist():
        parts = name.split("/")
        if name.endswith(".png") and len(parts) == 4:
            found.setdefault(f"{parts[1]}/{parts[2]}", []).append(name)
    return {k: sorted(v) for k, v in sorted(found.items())}


def write_split(archive: zipfile.ZipFile, chosen: list[tuple[str, list[str]]], folder: Path) -> None:
    for key, members in chosen:
        target = folder / key.replace("/", "__")
        target.mkdir(parents=True, exist_ok=True)
        for member in members:
            path = target / Path(member).name
            if not path.exists():
                path.write_bytes(archive.read(member))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--omniglot", type=Path, required=True, help="folder with images_*.zip")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--train", type=int, default=64)
    parser.add_argument("--val", type=int, default=16)
    parser.add_argument("--test", type=int, default=20)
    args = parser.parse_args(argv)
    sources = {name: args.omniglot / f"images_{name}.zip" for name in ("background", "evaluation")}
    missing = [str(p) for p in sources.values() if not p.is_file()]
    if missing:
        print(f"error: missing {', '.join(missing)}", file=sys.stderr)
        return 1
    with zipfile.ZipFile(sources["background"]) as background:
        chars = list(characters(background).items())
        if len(chars) < args.train + args.val:
            print(f"error: the background set has {len(chars)} characters", file=sys.stderr)
            return 1
        write_split(background, chars[:args.train], args.out / "train")
        write_split(background, chars[args.train:args.train + args.val], args.out / "val")
    with zipfile.ZipFile(sources["evaluation"]) as evaluation:
        write_split(evaluation, list(characters(evaluation).items())[:args.test], args.out / "test")
    print(f"wrote {args.out}: {args.train} / {args.val} / {args.test} classes (train / val / test)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
