"""The ``gatekeeper`` command line: build, route, import, eval, tune and serve.

User mistakes (a bad catalog, a missing file) print a clear message and exit 2,
never a traceback. A reader that stops early (``gatekeeper eval ... | head``)
ends the command quietly with exit 0.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Callable, Sequence

from gatekeeper.catalog import CatalogError, default_catalog_path
from gatekeeper.embedders import EmbeddingError
from gatekeeper.errors import UserError

EXIT_USAGE = 2


Command = Callable[[argparse.Namespace], int]


def add_catalog_argument(parser: argparse.ArgumentParser) -> None:
    """The shared ``--catalog`` flag (defaults to ``$GATEKEEPER_CATALOG`` or ``intents/``)."""
    parser.add_argument("--catalog", default=None,
                        help="catalog file or directory (default: $GATEKEEPER_CATALOG or intents/)")


def catalog_arg(args: argparse.Namespace) -> str:
    """The catalog path of a parsed command line."""
    return args.catalog or default_catalog_path()


def build_parser() -> argparse.ArgumentParser:
    """All subcommands and their flags."""
    from gatekeeper.commands import build_cmd, eval_cmd, import_cmd, review_cmd, route_cmd, tune_cmd
    from gatekeeper.server import serve_cmd

    parser = argparse.ArgumentParser(prog="gatekeeper", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (build_cmd, route_cmd, import_cmd, eval_cmd, tune_cmd, serve_cmd, review_cmd):
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gatekeeper`` console script."""
    from gatekeeper.logs import configure_logging

    args = build_parser().parse_args(argv)
    try:
        configure_logging()
        code = args.handler(args)
        sys.stdout.flush()  # a reader gone while output was still buffered shows up here, not at exit
        return code
    except BrokenPipeError:
        return _stdout_closed()
    except CatalogError as error:
        print(f"catalog error ({len(error.problems)} problem{'s' if len(error.problems) > 1 else ''}):",
              file=sys.stderr)
        for problem in error.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_USAGE
    except (UserError, EmbeddingError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def _stdout_closed() -> int:
    """The reader of stdout went away (``| head``): stop quietly, exit 0.

    Output nobody reads any more is not a failure, so ``set -o pipefail``
    scripts carry on. stdout is pointed at /dev/null so that Python's final
    flush at exit cannot raise the error again (the standard recipe of the
    Python documentation, "Note on SIGPIPE").
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 0


def print_json(obj: object) -> None:
    """One JSON object per line, UTF-8 kept readable."""
    print(json.dumps(obj, ensure_ascii=False), flush=True)
