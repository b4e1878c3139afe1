"""Command line: ``minivlm <command> ...`` or ``python -m minivlm <command> ...``.

Commands
    models              list registered models
    student SRC...      generate student exercise notebooks from instructor sources
    grade DIR --out F   execute and grade a folder of submitted notebooks into a CSV
    slides SRC --out D  build lecture decks to offline reveal.js HTML
    zoo                 build (or show) the cached pretrained shapes-world components
"""

from __future__ import annotations

import argparse
import sys


def _cmd_models(args: argparse.Namespace) -> int:
    from minivlm.presets import list_models

    for name in list_models(args.pattern):
        print(name)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="minivlm", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    m = sub.add_parser("models", help="list registered models")
    m.add_argument("pattern", nargs="?", default="*")
    m.set_defaults(func=_cmd_models)

    # Each command module adds its own sub-parser; imported lazily so that
    # `minivlm models` stays fast.
    for modname in ("minivlm.grading", "minivlm.slides", "minivlm.zoo"):
        try:
            mod = __import__(modname, fromlist=["add_cli"])
        except ModuleNotFoundError as e:
            if e.name != modname:
                raise
            continue
        mod.add_cli(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
