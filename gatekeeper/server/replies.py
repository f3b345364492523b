"""The canned reply to a rejected chat completion, as an OpenAI ``chat.completion`` or SSE stream.

Usage is reported as zero tokens: no model ran. ``system_fingerprint`` is
``"gatekeeper"`` so logs can tell canned replies from the LLM's.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Iterator

SYSTEM_FINGERPRINT = "gatekeeper"


def canned_completion(reply: str, model: str, n: int = 1) -> dict:
    """A complete non-streaming ``chat.completion`` with ``n`` choices whose assistant message is ``reply``."""
    return {
        "id": _completion_id(), "object": "chat.completion", "created": int(time.time()), "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [{"index": index, "message": {"role": "assistant", "content": reply, "refusal": None},
                     "logprobs": None, "finish_reason": "stop"} for index in range(n)],
        "usage": _usage(),
    }


def canned_stream(reply: str, model: str, include_usage: bool = False, n: int = 1) -> Iterator[bytes]:
    """The same reply as ``chat.completion.chunk`` SSE events: role+content and stop for each of the ``n``
    choices, [usage], ``[DONE]``."""
    base = {"id": _completion_id(), "object": "chat.completion.chunk", "created": int(time.time()),
            "model": model, "system_fingerprint": SYSTEM_FINGERPRINT}
    chunks = [
        *({**base, "choices": [{"index": index, "delta": {"role": "assistant", "content": reply},
                                "logprobs": None, "finish_reason": None}]} for index in range(n)),
        *({**base, "choices": [{"index": index, "delta": {}, "logprobs": None, "finish_reason": "stop"}]}
          for index in range(n)),
    ]
    if include_usage:
        chunks.append({**base, "choices": [], "usage": _usage()})
    for chunk in chunks:
        yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n".encode()
    yield b"data: [DONE]\n\n"


def _completion_id() -> str:
    return f"chatcmpl-gk-{uuid.uuid4().hex[:24]}"


def _usage() -> dict:
    return {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
