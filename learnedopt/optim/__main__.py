"""``python -m learnedopt.optim export-rule CHECKPOINT OUT``: write the transferable rule of a
meta-training checkpoint; ``python -m learnedopt.optim show FILE``: describe a rule file."""

from __future__ import annotations

import argparse
import sys

from learnedopt.optim.pretrained import (PretrainedError, describe_rule, export_rule, load_rule,
                                         shipped_rules)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m learnedopt.optim",
        description="Rule files for the drop-in learned optimizers (learnedopt.optim).",
        epilog="example: python -m learnedopt.optim export-rule runs/turtle/best.pt turtle-sine.pt")
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export-rule", help="write the rule file of a meta-training checkpoint")
    export.add_argument("checkpoint", help="a checkpoint written by `learnedopt train`")
    export.add_argument("out", help="where to write the rule file (.pt)")
    show = commands.add_parser("show", help="describe a rule file or checkpoint (or list shipped rules)")
    show.add_argument("file", nargs="?", help="path or shipped name; omit to list shipped rules")
    args = parser.parse_args(argv)
    try:
        if args.command == "export-rule":
            data = export_rule(args.checkpoint, args.out)
            print(f"wrote {args.out}: {describe_rule(data)}")
        elif args.file is None:
            print("\n".join(shipped_rules()) or "no rules shipped")
        else:
            print(describe_rule(load_rule(args.file)))
    except PretrainedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
