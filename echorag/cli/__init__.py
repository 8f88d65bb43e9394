"""The ``echorag`` command.

Each module registers its subcommands: ``remote``, ``chat`` and ``users`` talk to a
running server over HTTP (``--url``); ``retrieval``, ``answers``, ``inversion`` and
``local`` work in-process. ``output`` prints for people or as JSON.
"""

from __future__ import annotations

import argparse
import sys

from echorag.cli import answers, chat, inversion, local, remote, retrieval, users
from echorag.cli.common import DEFAULT_URL, CommandError

COMMAND_MODULES = (chat, remote, users, retrieval, answers, inversion, local)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="echorag", description="EchoRAG: Korean RAG chat that learns.")
    parser.add_argument("--url", default=DEFAULT_URL, help="server URL (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=120.0, help="HTTP timeout in seconds")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except CommandError as exc:
        print(f"echorag: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
