"""The ``gatekeeper`` command line: build, route, import, eval, tune, serve and review.

User mistakes (a bad catalog, a missing file) print a clear message and exit 2,
never a traceback. A reader that stops early (``gatekeeper eval ... | head``)
ends the command quietly with exit 0. Only the module of the command being run
is imported (:data:`COMMANDS`), so ``gatekeeper --help`` loads neither
scikit-learn nor the model.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Callable, NamedTuple, Sequence

from gatekeeper.errors import CatalogError, EmbeddingError, UserError

EXIT_USAGE = 2


class CommandSpec(NamedTuple):
    """A subcommand: the module whose ``register(parser)`` adds its flags and handler, and its one-line help."""

    module: str
    help: str


#: Every subcommand, in the order ``--help`` lists them.
COMMANDS = {
    "build": CommandSpec("gatekeeper.commands.build_cmd", "build or refresh the catalog's index"),
    "route": CommandSpec("gatekeeper.commands.route_cmd", "decide whether messages are in scope"),
    "import": CommandSpec("gatekeeper.commands.import_cmd",
                          "make a catalog from a labelled file (JSON lines, CSV, TSV)"),
    "eval": CommandSpec("gatekeeper.commands.eval_cmd", "measure the gate on labelled JSON lines"),
    "tune": CommandSpec("gatekeeper.commands.tune_cmd", "pick thresholds from labelled traffic (ROC)"),
    "serve": CommandSpec("gatekeeper.server.serve_cmd",
                         "run the HTTP sidecar (OpenAI-compatible gate in front of an LLM)"),
    "review": CommandSpec("gatekeeper.commands.review_cmd",
                          "label logged traffic on a local page (saved as tune/eval data)"),
}


Command = Callable[[argparse.Namespace], int]


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser with every subcommand listed; the flags only of ``command`` (all of them when None)."""
    parser = argparse.ArgumentParser(prog="gatekeeper", description=__doc__.splitlines()[0].replace("``", ""))
    sub = parser.add_subparsers(dest="command", required=True)
    for name, spec in COMMANDS.items():
        if command is None or name == command:
            importlib.import_module(spec.module).register(sub.add_parser(name, help=spec.help))
        else:
            sub.add_parser(name, help=spec.help, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gatekeeper`` console script."""
    from gatekeeper.logs import configure_logging

    argv = list(sys.argv[1:] if argv is None else argv)
    # The top-level parser takes no option but --help, so the first word that is not one names the command.
    command = next((word for word in argv if not word.startswith("-")), None)
    args = build_parser(command if command in COMMANDS else "").parse_args(argv)
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
