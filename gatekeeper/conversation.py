"""Conversation-aware gating: which texts of a request to gate, and when earlier turns rescue a follow-up.

**What is gated** (:func:`gated_texts`): all text a model will read after the
last assistant turn, whatever its role (role names are case-insensitive):

* the latest user message, decided with the follow-up rule below;
* every other message after the last assistant turn: user, ``system``,
  ``developer`` or any other role, each text part alone (parts of type
  ``text``, ``input_text`` and ``output_text``; a message with several text
  parts, the latest user message included, has each part gated alone too);
* a final assistant message (a prefill the model continues);
* not: the opening ``system``/``developer`` messages before the conversation
  (the bot's own prompt, written by its owner), tool results (``tool`` and
  ``function`` roles: the bot's own tools answering the assistant's call), and
  turns before the last assistant turn (gated when they were the latest).

A text longer than the catalog's ``max_chars`` is gated at its start and at
its end (two windows). The request is accepted only if every piece is in
scope: the most off-topic rejected piece decides (:func:`decide_turn`).

**The latest user message**: alone, a short follow-up such as "那另一个呢?" or
"and the other one?" says nothing about the topic and is rejected, although
the conversation is on topic. A message matched to an intent with ``action:
continue`` (the conversation pack's ``continuation``: "好的", "ok") has no
topic of its own either: with earlier user turns it takes their decision,
accepted as a follow-up when they are in scope and rejected when they are not. Otherwise, when the latest message is rejected, it is
accepted as a **follow-up** if all of these hold:

1. **Short**: at most ``max_tokens`` estimated tokens (:func:`estimate_tokens`).
2. **Vague on its own**: no catalog example, in scope or out of scope, has a
   cosine similarity of ``max_similarity`` or more to it. A message that is
   recognisably about something (the weather, a recipe, a prompt injection the
   catalog lists as out of scope) is not a follow-up, however short.
3. **In scope in context**: the earlier user turns (up to ``context_turns``)
   joined with the message pass the gate.
4. **The context carries the meaning**: the joined text's embedding is at
   least as close to the context's as to the message's. A message that pulls
   the conversation towards a topic of its own is not a follow-up.

All four are language-independent (no word lists). Conditions 2 and 4 use the
encoder's geometry, so ``max_similarity`` suits the default model (USE
multilingual); re-check it with ``tests/test_server_conversation.py`` when
changing models. The accepted decision keeps the joined text's intent and
score, and the latest message as its text.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field, replace
from typing import Awaitable, Callable, Mapping, Sequence

import numpy as np

from gatekeeper.gate import Gate
from gatekeeper.router import Decision
from gatekeeper.text import normalise

#: Embeds normalised query texts (e.g. through the server's micro-batcher).
Embed = Callable[[Sequence[str]], Awaitable[np.ndarray]]

#: Content part types whose ``text`` a model reads (chat completions, and the Responses API's input and output).
TEXT_PART_TYPES = frozenset({"text", "input_text", "output_text"})
#: Roles of the bot's own tools' results, answering the assistant's call: not gated.
TOOL_ROLES = frozenset({"tool", "function"})
#: Roles of instructions: those opening the conversation are the bot's own prompt, not gated.
INSTRUCTION_ROLES = frozenset({"system", "developer"})

_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")


@dataclass(frozen=True)
class FollowupPolicy:
    """When an earlier user turn may rescue a rejected latest message (see the module doc)."""

    context_turns: int = 2
    max_tokens: float = 12.0
    max_similarity: float = 0.6


@dataclass(frozen=True)
class TurnDecision:
    """The gate's decision on the latest user turn, and whether context was needed to accept it."""

    decision: Decision
    followup: bool = False
    #: The earlier user turns the message was decided with (at most ``context_turns``, oldest first).
    context: tuple[str, ...] = ()
    #: The normalised text whose score decided when it is not the decision's own: the earlier turns joined (a
    #: continuation) or the turns and the message joined (a rescued follow-up).
    context_text: str | None = None

    @property
    def scored_text(self) -> str:
        """The normalised text whose score decided: :attr:`context_text`, else the decision's own text."""
        return self.context_text if self.context_text is not None else self.decision.text


@dataclass(frozen=True)
class GatedTexts:
    """What the gate decides for a request (see the module doc)."""

    #: The latest user message's text (text parts joined), or its non-text content (rejected as not text).
    latest: object
    #: The earlier user texts, oldest first: the context of the follow-up rule.
    previous: list[str] = field(default_factory=list)
    #: Every other text the model reads after the last assistant turn: each must be in scope on its own.
    others: list[str] = field(default_factory=list)


def estimate_tokens(text: str) -> float:
    """Rough token count: one per CJK character plus one per four other characters.

    Tokenisers differ; this is the estimate behind ``gatekeeper_tokens_saved_total``
    and the follow-up length limit, good to within a factor of about 1.5 for
    OpenAI-style BPE on Chinese and English.
    """
    cjk = len(_CJK.findall(text))
    return cjk + (len(text) - cjk) / 4


def text_parts(content: object) -> list[str]:
    """The texts of a message's ``content``: a string, or each text part of a parts list (:data:`TEXT_PART_TYPES`)."""
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        return [part["text"] for part in content if isinstance(part, Mapping)
                and part.get("type") in TEXT_PART_TYPES and isinstance(part.get("text"), str)]
    return []


def message_text(content: object) -> object:
    """The text of a message's ``content``: a string as is, the text parts of a parts list joined.

    Anything else (None, an image-only parts list, a number) is returned as
    is, or as None, and the gate rejects it as not text.
    """
    if isinstance(content, list):
        texts = text_parts(content)
        return " ".join(texts) if texts else None
    return content


def role_of(message: Mapping) -> str:
    """A message's role, lower-cased ("User" is a user); "" without one."""
    role = message.get("role")
    return role.strip().lower() if isinstance(role, str) else ""


def user_turns(messages: Sequence[Mapping]) -> tuple[object, list[str]]:
    """The latest user message's text (or non-text content) and the earlier user texts, oldest first."""
    users = [message_text(message.get("content")) for message in messages if role_of(message) == "user"]
    if not users:
        return None, []
    return users[-1], [text for text in users[:-1] if isinstance(text, str) and text.strip()]


def gated_texts(messages: Sequence[Mapping]) -> GatedTexts:
    """Every text of ``messages`` a model will read that the gate must decide (the rule of the module doc)."""
    latest, previous = user_turns(messages)
    roles = [role_of(message) for message in messages]
    latest_at = max((i for i, role in enumerate(roles) if role == "user"), default=None)
    others = []
    for i in range(_gated_from(roles), len(messages)):
        parts = [part for part in text_parts(messages[i].get("content")) if part.strip()]
        if roles[i] in TOOL_ROLES or (i == latest_at and len(parts) < 2):
            continue  # a tool's result; or the latest message, decided whole (its parts too when it has several)
        others.extend(parts)
    return GatedTexts(latest, previous, others)


def _gated_from(roles: Sequence[str]) -> int:
    """Where the gated messages start: after the last assistant turn and the opening system/developer messages.

    A final assistant message is not that turn but a prefill the model continues, so it is gated.
    """
    opening = next((i for i, role in enumerate(roles) if role not in INSTRUCTION_ROLES), len(roles))
    last_turn = max((i for i, role in enumerate(roles[:-1]) if role == "assistant"), default=-1)
    return max(opening, last_turn + 1)


def prompt_text(messages: Sequence[Mapping]) -> str:
    """Every message's text joined: what a forwarded request would have sent as the prompt."""
    texts = (message_text(message.get("content")) for message in messages)
    return "\n".join(text for text in texts if isinstance(text, str))


async def decide_turn(gate: Gate, embed: Embed, latest: object, previous: Sequence[str],
                      policy: FollowupPolicy, others: Sequence[str] = ()) -> TurnDecision:
    """Decide a request: the latest user message, letting earlier user turns decide a message with no topic of
    its own, and every other gated text (``others``, :func:`gated_texts`) on its own.

    A text longer than ``max_chars`` is decided at its start and its end. If
    any other text, or the end of the latest message, is rejected, the request
    is: the most off-topic rejected piece (lowest margin) is the decision.
    Costs one encoder call for all the pieces, and a second only for a latest
    message that has earlier turns and is either a ``continue`` intent's or
    short, vague and rejected. The second call is best-effort: if it fails,
    the message is decided alone.
    """
    head, *tail = _windows(gate, latest)
    text, _, reason = head
    if reason is not None:
        return TurnDecision(gate.router.empty_decision(text, reason))
    windows = [*tail, *(window for other in others for window in _windows(gate, other))]
    pieces = [head, *(window for window in windows if window[2] is None)]  # an empty piece says nothing: skipped
    vectors = await embed([piece[0] for piece in pieces])
    decisions = gate.decide_prepared(pieces, list(range(len(pieces))), vectors)
    alone, vector = decisions[0], vectors[:1]
    if any(not decision.accepted for decision in decisions[1:]):
        return TurnDecision(min((decision for decision in decisions if not decision.accepted),
                                key=lambda decision: decision.margin))
    turns = tuple(previous[-policy.context_turns:]) if policy.context_turns else ()
    context = " ".join(turns)
    if not context:
        return TurnDecision(alone)
    # The context must fit the length limit with the latest message whole: cut its oldest part.
    context = context[max(0, len(context) + len(text) + 1 - gate.catalog.defaults.max_chars):]
    try:
        if gate.router.continues(alone):
            return replace(await _continue_conversation(gate, embed, alone, context), context=turns)
        if alone.accepted or estimate_tokens(text) > policy.max_tokens:
            return TurnDecision(alone, context=turns)
        return replace(await _rescue_follow_up(gate, embed, alone, vector, context, policy), context=turns)
    except Exception:  # noqa: BLE001 - the embedder reports its own failures; the context check is optional
        return TurnDecision(alone, context=turns)


def _windows(gate: Gate, message: object) -> list[tuple[str, bool, str | None]]:
    """``message`` prepared for the gate (:meth:`Gate.prepare`, its first ``max_chars`` characters) and, when it is
    longer, its last ``max_chars`` characters too: an overlong text is gated at both ends."""
    head = gate.prepare(message)
    if not head[1]:
        return [head]
    max_chars = gate.catalog.defaults.max_chars
    return [head, (normalise(message, sys.maxsize)[0][-max_chars:].strip(), True, None)]


async def _continue_conversation(gate: Gate, embed: Embed, alone: Decision, context: str) -> TurnDecision:
    """A message with no topic of its own (an ``action: continue`` intent such as "好的") takes the decision of
    the earlier user turns: accepted as a follow-up when they are in scope, rejected when they are not."""
    prepared = gate.prepare(context)
    earlier = gate.decide_prepared([prepared], [0], await embed([prepared[0]]))[0]
    return TurnDecision(replace(earlier, text=alone.text, truncated=alone.truncated), followup=earlier.accepted,
                        context_text=prepared[0])


async def _rescue_follow_up(gate: Gate, embed: Embed, alone: Decision, vector: np.ndarray, context: str,
                            policy: FollowupPolicy) -> TurnDecision:
    """Conditions 2-4 of the module doc for a short, rejected message: accepted with its context, or ``alone``."""
    nearest, _ = gate.artifacts.index.search(vector, 1)
    if float(nearest[0, 0]) >= policy.max_similarity:
        return TurnDecision(alone)
    joined_prepared = gate.prepare(f"{context} {alone.text}")
    joined_vector, context_vector = await embed([joined_prepared[0], gate.prepare(context)[0]])
    joined = gate.decide_prepared([joined_prepared], [0], joined_vector[None, :])[0]
    if joined.accepted and float(joined_vector @ context_vector) >= float(joined_vector @ vector[0]):
        return TurnDecision(replace(joined, text=alone.text, truncated=alone.truncated), followup=True,
                            context_text=joined_prepared[0])
    return TurnDecision(alone)
