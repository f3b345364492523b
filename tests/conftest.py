"""Session-wide fixtures: one real embedding model, and build state kept out of the repo."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
INTENTS = REPO / "intents"
SHARED_DATA = REPO.parent / "shared" / "data"
#: The sidecar tests' fixtures (asgi_sidecar, memory_upstream, fake_upstream, start_sidecar), for every test module.
pytest_plugins = ["tests.server_fixtures"]


def pytest_configure(config: pytest.Config) -> None:
    """Builds write to a temporary state dir, never into intents/."""
    state = tempfile.mkdtemp(prefix="gatekeeper-test-state-")
    os.environ["GATEKEEPER_STATE_DIR"] = state
    config._gatekeeper_state = state  # type: ignore[attr-defined]


def pytest_unconfigure(config: pytest.Config) -> None:
    """Remove the temporary state dir."""
    shutil.rmtree(getattr(config, "_gatekeeper_state", ""), ignore_errors=True)


@pytest.fixture(scope="session")
def use_embedder():
    """The default model (USE multilingual v3), loaded once per session."""
    from gatekeeper.embedders.use_multilingual import UseMultilingualEmbedder

    return UseMultilingualEmbedder(threads=1)


@pytest.fixture(scope="session")
def telecom_gate(use_embedder):
    """The bundled Chinese telecom catalog, built once."""
    from gatekeeper.gate import Gate

    return Gate(embedder=use_embedder).fit(INTENTS / "telecom_zh.yaml")


@pytest.fixture(scope="session")
def banking_gate(use_embedder):
    """The bundled English banking catalog, built once."""
    from gatekeeper.gate import Gate

    return Gate(embedder=use_embedder).fit(INTENTS / "banking_en.yaml")


@pytest.fixture
def catalog_dir(tmp_path: Path) -> Path:
    """A fresh directory for catalog files written by a test."""
    folder = tmp_path / "catalog"
    folder.mkdir()
    return folder
