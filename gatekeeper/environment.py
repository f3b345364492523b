"""The process environment: every variable gatekeeper reads is named here and read through here.

* ``GATEKEEPER_CATALOG`` -- the catalog used when ``--catalog`` is not given (default ``intents/``).
* ``GATEKEEPER_STATE_DIR`` -- where built indexes and the embedding cache live (default ``.gatekeeper/``
  beside the catalog).
* ``GATEKEEPER_LOG_LEVEL`` -- debug, info (default), warning or error.
* ``GATEKEEPER_CONFIG`` -- the sidecar's YAML config file.
* ``GATEKEEPER_<SETTING>`` -- any other sidecar setting (:mod:`gatekeeper.server.config`, which
  layers flags over these over the config file over defaults).
* the variable a catalog's ``model.api_key_env`` names -- the embedding endpoint's key (never in a file).

An empty variable counts as unset everywhere.
"""

from __future__ import annotations

import os
from typing import Mapping

PREFIX = "GATEKEEPER_"
CATALOG = PREFIX + "CATALOG"
STATE_DIR = PREFIX + "STATE_DIR"
LOG_LEVEL = PREFIX + "LOG_LEVEL"
CONFIG = PREFIX + "CONFIG"


def read(name: str, default: str | None = None) -> str | None:
    """The variable ``name``, or ``default`` when it is unset or empty."""
    value = os.environ.get(name, "")
    return value if value != "" else default


def snapshot() -> Mapping[str, str]:
    """Every variable of the process, as the sidecar's settings read them (one consistent view)."""
    return dict(os.environ)
