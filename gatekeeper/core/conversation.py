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

**The latest user message** is decided with the conversation
(:mod:`gatekeeper.core.conversation_model` has the rule and its measured rates are
in docs/sidecar.md): alone, "那另一个呢?", "and the 2 year?", a bare address
given because the bot asked for it, or "好的" (the conversation pack's
``continuation`` intent, ``action: continue``) say nothing about the topic. A
message that is not accepted on its own is accepted as a **follow-up** when the
conversation's topic, set by the latest earlier user turn that has one (over up
to ``context_turns`` turns, the bot's canned rejections included), is in scope
and the message is not confidently off topic on its own by the head's
out-of-scope class and its nearest negative, or by an out-of-scope margin
beyond the in-scope range (more leeway after a question of the bot). A message
accepted on its own stays accepted unless its last clause is confidently off
topic ("ok. who won the match last night?"). The latest message and the
earlier user turns are embedded in one encoder call (the sidecar's query LRU
already holds the earlier turns); the last clause, when the rule needs it, in
a second, short one. The accepted follow-up keeps the intent and score of the
turn that set the topic, and the latest message as its text.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Awaitable, Callable, Mapping, Sequence

import numpy as np

from gatekeeper.core.conversation_model import FollowupPolicy, LazyEvidence, assess, judge, last_clause, worth_a_clause
from gatekeeper.core.router import Decision
from gatekeeper.core.text import normalise

if TYPE_CHECKING:
    from gatekeeper.gate import Gate  # the public object these functions read; imported for types only

__all__ = ["FollowupPolicy", "GatedTexts", "TurnDecision", "decide_turn", "gated_texts", "rejected_in_context"]

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
class TurnDecision:
    """The gate's decision on the latest user turn, and whether context was needed to accept it."""

    decision: Decision
    followup: bool = False
    #: The earlier user turns the message was decided with (at most ``context_turns``, oldest first).
    context: tuple[str, ...] = ()
    #: The normalised text whose score decided when it is not the decision's own: the earlier turn that set the
    #: conversation's topic (a follow-up, or a continuation of an off-topic conversation).
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
    #: The bot's answer to each of :attr:`previous` (its first assistant text after that turn; None: none). Context
    #: the rule reads, not gated, so not part of equality.
    replies: list[str | None] = field(default_factory=list, compare=False)


def rejected_in_context(turn: TurnDecision) -> bool:
    """Whether the conversation rule rejected a message whose own score passes its threshold (an off-topic request
    after an on-topic turn, or an off-topic last clause): ``eval`` and ``tune`` lower such a row's score too."""
    decision = turn.decision
    return not decision.accepted and decision.reason is not None and decision.score >= decision.threshold


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
    return GatedTexts(latest, previous, others, bot_replies(messages))


def bot_replies(messages: Sequence[Mapping]) -> list[str | None]:
    """The bot's answer to each earlier user text of :func:`user_turns`: the text of the first assistant message
    after it and before the next user message, or None."""
    replies: list[str | None] = []
    pending = False
    for message in messages:
        role = role_of(message)
        if role == "user":
            text = message_text(message.get("content"))
            pending = isinstance(text, str) and bool(text.strip())
            if pending:
                replies.append(None)
        elif role == "assistant" and pending:
            text = message_text(message.get("content"))
            if isinstance(text, str) and text.strip():
                replies[-1] = text
                pending = False
    latest = message_text(next((m.get("content") for m in reversed(messages) if role_of(m) == "user"), None))
    if isinstance(latest, str) and latest.strip() and replies:
        replies.pop()  # the latest user message's own slot: it has no answer yet
    return replies


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
                      policy: FollowupPolicy, others: Sequence[str] = (),
                      replies: Sequence[str | None] = ()) -> TurnDecision:
    """Decide a request: the latest user message with the conversation rule (module doc), and every other gated
    text (``others``, :func:`gated_texts`) on its own.

    ``previous`` are the earlier user texts, oldest first, and ``replies`` the
    bot's answer to each (:func:`bot_replies`; empty when unknown, as for a
    labelled row's context). A text longer than ``max_chars`` is decided at its
    start and its end. If any other text, or the end of the latest message, is
    rejected, the request is: the most off-topic rejected piece (lowest
    margin) is the decision. Costs one encoder call for every piece and the
    earlier turns read, and a second, short one for the last clause of a
    message the rule would accept and whose clause is worth a look
    (:func:`~gatekeeper.core.conversation_model.worth_a_clause`).
    """
    head, *tail = _windows(gate, latest)
    text, _, reason = head
    if reason is not None:
        return TurnDecision(gate.router_.empty_decision(text, reason))
    windows = [*tail, *(window for other in others for window in _windows(gate, other))]
    pieces = [head, *(window for window in windows if window[2] is None)]  # an empty piece says nothing: skipped
    turns = tuple(previous[-policy.context_turns:]) if policy.context_turns else ()
    answers = list(replies)[-len(turns):] if turns else []
    answers = [None] * (len(turns) - len(answers)) + answers  # the bot's answer to each turn, aligned
    kept = [(gate.prepare(turn), answer) for turn, answer in zip(turns, answers)]
    kept = [(prepared, answer) for prepared, answer in kept if prepared[2] is None]
    earlier = [prepared for prepared, _ in kept]
    vectors = await embed([item[0] for item in pieces + earlier])
    evidence = assess(gate, pieces, vectors[:len(pieces)])
    decisions = [item.decision for item in evidence]
    if any(not decision.accepted for decision in decisions[1:]):
        return TurnDecision(min((decision for decision in decisions if not decision.accepted),
                                key=lambda decision: decision.margin))
    if not earlier:
        return TurnDecision(decisions[0])
    latest_evidence, turn_evidence = evidence[0], LazyEvidence(gate, earlier, vectors[len(pieces):])
    bot_answers = [answer for _, answer in kept]
    verdict = judge(latest_evidence, None, turn_evidence, bot_answers, gate.router_, policy)
    clause = last_clause(text) if verdict.decision.accepted and worth_a_clause(latest_evidence) else None
    if clause:  # only an accepted message's last clause can change the verdict (to a rejection)
        clause_prepared = [gate.prepare(clause)]
        clause_evidence = assess(gate, clause_prepared, await embed([clause_prepared[0][0]]))[0]
        verdict = judge(latest_evidence, clause_evidence, turn_evidence, bot_answers, gate.router_, policy)
    return TurnDecision(verdict.decision, followup=verdict.followup, context=turns, context_text=verdict.context_text)


def _windows(gate: Gate, message: object) -> list[tuple[str, bool, str | None]]:
    """``message`` prepared for the gate (:meth:`Gate.prepare`, its first ``max_chars`` characters) and, when it is
    longer, its last ``max_chars`` characters too: an overlong text is gated at both ends."""
    head = gate.prepare(message)
    if not head[1]:
        return [head]
    max_chars = gate.catalog_.defaults.max_chars
    return [head, (normalise(message, sys.maxsize)[0][-max_chars:].strip(), True, None)]
