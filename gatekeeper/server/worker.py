"""What the micro-batcher's decision thread does with a batch's vectors: the gate's decisions, off the event loop.

The service queues each request in the micro-batcher
(:meth:`gatekeeper.server.batching.MicroBatcher.process`) with one of the two
``finish`` functions here; the decision thread calls it with the vectors of
every request of that kind that an encoder call completed:

* :func:`decide_texts` -- independent messages (``/v1/gate`` ``text`` or
  ``texts``): the requests' messages are scored together, per gate, with one
  n-gram transform, one head product and one index search for the batch.
* :func:`decide_turns` -- conversations (chat completions, ``/v1/gate``
  ``messages``): :func:`gatekeeper.core.conversation.decide_turn` runs on the
  event loop up to its first encoder call (:meth:`TurnJob.start`), and the
  decision thread resumes it with the vectors. The rule's occasional second,
  one-text encoder call (an accepted message's last clause) is made right
  there, in the decision thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Coroutine, Generator, Sequence

import numpy as np

from gatekeeper.core.conversation import FollowupPolicy, GatedTexts, TurnDecision, decide_turn
from gatekeeper.core.router import Decision
from gatekeeper.gate import Gate, Prepared

#: Encoder calls one conversation's rule may make (it makes one, sometimes two); more is a bug.
MAX_TURN_CALLS = 4


@dataclass(eq=False)
class TextsJob:
    """Independent messages of one request, prepared (:meth:`Gate.prepare_many`) for :func:`decide_texts`."""

    gate: Gate
    prepared: list[Prepared]
    #: Positions of the messages that need scoring (not empty, text).
    scorable: list[int]

    @classmethod
    def of(cls, gate: Gate, messages: Sequence[object]) -> "TextsJob":
        """``messages`` prepared for ``gate``."""
        return cls(gate, *gate.prepare_many(messages))

    @property
    def queries(self) -> list[str]:
        """The texts to embed: the scorable messages' clean texts."""
        return [self.prepared[i][0] for i in self.scorable]


def decide_texts(jobs: list[TextsJob], vectors: list[np.ndarray]) -> list[list[Decision]]:
    """Each job's decisions, given its queries' vectors; the jobs of one gate are scored as one batch."""
    results: dict[int, list[Decision]] = {}
    by_gate: dict[int, list[int]] = {}
    for position, job in enumerate(jobs):
        by_gate.setdefault(id(job.gate), []).append(position)
    for positions in by_gate.values():
        gate = jobs[positions[0]].gate
        prepared: list[Prepared] = []
        scorable: list[int] = []
        for position in positions:
            scorable.extend(len(prepared) + i for i in jobs[position].scorable)
            prepared.extend(jobs[position].prepared)
        decisions = gate.decide_prepared(prepared, scorable, np.concatenate([vectors[p] for p in positions]))
        start = 0
        for position in positions:
            count = len(jobs[position].prepared)
            results[position] = decisions[start:start + count]
            start += count
    return [results[position] for position in range(len(jobs))]


class _Vectors:
    """What :class:`TurnJob`'s ``embed`` returns to the rule: awaiting it hands the texts to whoever drives the
    coroutine, which sends back their vectors (or throws the encoder's error in)."""

    def __init__(self, texts: Sequence[str]):
        self.texts = list(texts)

    def __await__(self) -> Generator["_Vectors", np.ndarray, np.ndarray]:
        return (yield self)


@dataclass(eq=False)
class TurnJob:
    """One conversation's decision, stopped at its first encoder call: :attr:`texts` to embed, then
    :func:`decide_turns` resumes it in the decision thread.

    A job whose caller stops waiting is never resumed: the rule's coroutine is
    closed when the job is dropped (never by the event loop, while the decision
    thread may be running it).
    """

    gate: Gate
    steps: Coroutine[Any, Any, TurnDecision]
    #: The texts the rule's first encoder call asked for.
    texts: list[str]

    @classmethod
    def start(cls, gate: Gate, texts: GatedTexts, policy: FollowupPolicy) -> "TurnJob | TurnDecision":
        """Run the rule on ``texts`` up to its first encoder call; the decision itself if it needs none."""
        steps = decide_turn(gate, _Vectors, texts.latest, texts.previous, policy, texts.others, texts.replies)
        try:
            request = steps.send(None)
        except StopIteration as finished:
            return finished.value
        return cls(gate, steps, _request(steps, request).texts)

    def finish(self, vectors: np.ndarray) -> TurnDecision | Exception:
        """Resume the rule with the vectors of :attr:`texts`, making its further encoder calls here, to its end
        (in the decision thread).

        An encoder failure the rule does not handle is returned, not raised:
        the caller applies its failure policy to it. Anything else raised is a bug.
        """
        sent: np.ndarray | None = vectors
        failure: Exception | None = None
        for _ in range(MAX_TURN_CALLS):
            try:
                request = self.steps.send(sent) if failure is None else self.steps.throw(failure)
            except StopIteration as finished:
                return finished.value
            except Exception as raised:
                if raised is failure:
                    return failure
                raise
            sent, failure = None, None
            try:
                sent = self.gate.embed(_request(self.steps, request).texts)
            except Exception as error:  # thrown into the rule, which may go on without it
                failure = error
        self.steps.close()
        raise RuntimeError(f"the conversation rule made more than {MAX_TURN_CALLS} encoder calls")


def decide_turns(jobs: list[TurnJob], vectors: list[np.ndarray]) -> list[TurnDecision | Exception]:
    """Each conversation's decision (or its encoder failure), given the vectors of its first encoder call."""
    return [job.finish(rows) for job, rows in zip(jobs, vectors, strict=True)]


def _request(steps: Coroutine, request: object) -> _Vectors:
    """The rule's request for vectors; anything else it awaited is a bug (it must await only its ``embed``)."""
    if isinstance(request, _Vectors):
        return request
    steps.close()
    raise RuntimeError(f"the conversation rule awaited {request!r}, not its embed function")
