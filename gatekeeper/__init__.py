"""gatekeeper: an intent gate in front of an LLM customer-service bot.

The public API::

    from gatekeeper import Gate, Decision, Policy, load_catalog, GatekeeperError

    gate = Gate().fit("intents/telecom_zh.yaml")
    gate.decide("我的话费怎么这么多")

Names are imported on first use, so ``import gatekeeper`` (and the CLI's
``--help``) stays fast: the model and scikit-learn load only when needed.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Public name -> the module defining it.
_EXPORTS = {
    "Gate": "gatekeeper.gate",
    "NotFittedError": "gatekeeper.gate",
    "Decision": "gatekeeper.core.router",
    "TurnDecision": "gatekeeper.core.conversation",
    "FollowupPolicy": "gatekeeper.core.conversation_policy",
    "Policy": "gatekeeper.core.thresholds",
    "Catalog": "gatekeeper.catalog.schema",
    "load_catalog": "gatekeeper.catalog.loader",
    "GatekeeperError": "gatekeeper.errors",
    "UserError": "gatekeeper.errors",
    "CatalogError": "gatekeeper.errors",
    "EmbeddingError": "gatekeeper.errors",
}

__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:
    from gatekeeper.catalog.loader import load_catalog
    from gatekeeper.catalog.schema import Catalog
    from gatekeeper.core.conversation import TurnDecision
    from gatekeeper.core.conversation_policy import FollowupPolicy
    from gatekeeper.core.router import Decision
    from gatekeeper.core.thresholds import Policy
    from gatekeeper.errors import CatalogError, EmbeddingError, GatekeeperError, UserError
    from gatekeeper.gate import Gate, NotFittedError


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use (PEP 562)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'gatekeeper' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
