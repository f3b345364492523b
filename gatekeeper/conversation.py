"""Conversation-aware gating: which user turn to gate, and when earlier turns rescue a follow-up.

A chat request is gated on its latest user message. Alone, a short follow-up
such as "那另一个呢?" or "and the other one?" says nothing about the topic and
is rejected, although the conversation is on topic. A message matched to an
intent with ``action: continue`` (the conversation pack's ``continuation``:
"好的", "ok") has no topic of its own either: with earlier user turns it takes
their decision, accepted as a follow-up when they are in scope and rejected
when they are not. Otherwise, when the latest message is rejected, it is
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
from dataclasses import dataclass, replace
from typing import Awaitable, Callable, Mapping, Sequence

import numpy as np

from gatekeeper.gate import Gate
from gatekeeper.router import Decision

#: Embeds normalised query texts (e.g. through the server's micro-batcher).
Embed = Callable[[Sequence[str]], Awaitable[np.ndarray]]

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


def estimate_tokens(text: str) -> float:
    """Rough token count: one per CJK character plus one per four other characters.

    Tokenisers differ; this is the estimate behind ``gatekeeper_tokens_saved_total``
    and the follow-up length limit, good to within a factor of about 1.5 for
    OpenAI-style BPE on Chinese and English.
    """
    cjk = len(_CJK.findall(text))
    return cjk + (len(text) - cjk) / 4


def message_text(content: object) -> object:
    """The text of a message's ``content``: a string as is, the text parts of a parts list joined.

    Anything else (None, an image-only parts list, a number) is returned as
    is, or as None, and the gate rejects it as not text.
    """
    if isinstance(content, list):
        parts = [part.get("text") for part in content if isinstance(part, Mapping) and part.get("type") == "text"]
        texts = [part for part in parts if isinstance(part, str)]
        return " ".join(texts) if texts else None
    return content


def user_turns(messages: Sequence[Mapping]) -> tuple[object, list[str]]:
    """The latest user message's text (or non-text content) and the earlier user texts, oldest first."""
    users = [message_text(message.get("content")) for message in messages if message.get("role") == "user"]
    if not users:
        return None, []
    return users[-1], [text for text in users[:-1] if isinstance(text, str) and text.strip()]


def prompt_text(messages: Sequence[Mapping]) -> str:
    """Every message's text joined: what a forwarded request would have sent as the prompt."""
    texts = (message_text(message.get("content")) for message in messages)
    return "\n".join(text for text in texts if isinstance(text, str))


async def decide_turn(gate: Gate, embed: Embed, latest: object, previous: Sequence[str],
                      policy: FollowupPolicy) -> TurnDecision:
    """Decide the latest user message, letting earlier user turns decide a message with no topic of its own.

    Costs one encoder call, and a second only for a message that has earlier
    turns and is either a ``continue`` intent's or short, vague and rejected.
    The second call is best-effort: if it fails, the message is decided alone.
    """
    prepared = gate.prepare(latest)
    text, _, reason = prepared
    if reason is not None:
        return TurnDecision(gate.router.empty_decision(text, reason))
    vector = await embed([text])
    alone = gate.decide_prepared([prepared], [0], vector)[0]
    context = " ".join(previous[-policy.context_turns:]) if policy.context_turns else ""
    if not context:
        return TurnDecision(alone)
    # The context must fit the length limit with the latest message whole: cut its oldest part.
    context = context[max(0, len(context) + len(text) + 1 - gate.catalog.defaults.max_chars):]
    try:
        if gate.router.continues(alone):
            return await _continue_conversation(gate, embed, alone, context)
        if alone.accepted or estimate_tokens(text) > policy.max_tokens:
            return TurnDecision(alone)
        return await _rescue_follow_up(gate, embed, alone, vector, context, policy)
    except Exception:  # noqa: BLE001 - the embedder reports its own failures; the context check is optional
        return TurnDecision(alone)


async def _continue_conversation(gate: Gate, embed: Embed, alone: Decision, context: str) -> TurnDecision:
    """A message with no topic of its own (an ``action: continue`` intent such as "好的") takes the decision of
    the earlier user turns: accepted as a follow-up when they are in scope, rejected when they are not."""
    prepared = gate.prepare(context)
    earlier = gate.decide_prepared([prepared], [0], await embed([prepared[0]]))[0]
    return TurnDecision(replace(earlier, text=alone.text, truncated=alone.truncated), followup=earlier.accepted)


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
        return TurnDecision(replace(joined, text=alone.text, truncated=alone.truncated), followup=True)
    return TurnDecision(alone)
