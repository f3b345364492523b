"""gatekeeper's errors, under one root (:class:`GatekeeperError`).

:class:`UserError` and its :class:`CatalogError` are the user's to fix: the
CLI shows their message and exits with code 2, never a traceback.
:class:`EmbeddingError` is the embedding backend failing; the sidecar applies
its failure policy to it.
"""

from __future__ import annotations

from dataclasses import dataclass


class GatekeeperError(Exception):
    """Every error gatekeeper raises on purpose."""


class UserError(GatekeeperError):
    """A mistake the user can fix (bad file, bad flag); the message says what and how."""


@dataclass(frozen=True)
class CatalogProblem:
    """One thing wrong with a catalog, located precisely enough to fix."""

    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}"
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


class CatalogError(UserError):
    """A catalog could not be loaded; ``problems`` lists every reason."""

    def __init__(self, problems: list[CatalogProblem]):
        self.problems = problems
        super().__init__("\n".join(str(problem) for problem in problems))


class EmbeddingError(GatekeeperError, RuntimeError):
    """The backend could not produce embeddings (model missing, endpoint down, bad reply)."""
