"""The conversation rule's settings: one frozen object, the single source of their defaults.

Kept apart from the rule (:mod:`gatekeeper.core.conversation_model`) so that the
sidecar's settings (:mod:`gatekeeper.server.config`) take their defaults from
it without importing the model: the sidecar, ``/v1/gate``, ``route
--conversation``, ``eval`` and ``tune`` then decide a conversation alike.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FollowupPolicy:
    """The conversation rule's settings (:mod:`gatekeeper.core.conversation_model` explains each); the defaults suit
    the default model."""

    #: Earlier user turns read, newest first (0: the latest message is decided alone).
    context_turns: int = 8
    #: A confidently off-topic message has a negative at least this near (cosine) ...
    off_topic_similarity: float = 0.40
    #: ... no further than this behind its nearest intent prototype ...
    off_topic_gap: float = 0.20
    #: ... and an out-of-scope margin of the head's embedding half (logits) of at least this.
    off_topic_margin: float = 3.5
    #: An out-of-scope margin of at least this is confidently off topic whatever the nearest negative, unless the
    #: bot asked a question or the catalog has no ``continue`` intent: beyond every held-out in-scope example of the
    #: bundled catalogs (:mod:`gatekeeper.core.conversation_model`).
    decisive_margin: float = 6.0
    #: After a question of the bot, the negative must be this near (an answer may resemble an off-topic request).
    answer_similarity: float = 0.72
    #: In a catalog without a ``continue`` intent (``conversation_pack: none``) generic follow-ups ("why?", "要多久?")
    #: have no prototypes of their own and sit nearer to the negatives: the bar is at least this.
    uncovered_similarity: float = 0.60
