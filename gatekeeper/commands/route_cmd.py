"""``gatekeeper route``: decide messages given as arguments or read from stdin, or the latest user message of
conversations (``--conversation FILE``) as the sidecar decides them."""

from __future__ import annotations

import argparse
import json
import sys

from gatekeeper.commands.common import add_catalog_argument, catalog_arg, load_gate, print_json
from gatekeeper.core.router import Decision
from gatekeeper.errors import UserError

#: Lines of stdin decided per encoder call.
STDIN_BATCH = 64


def register(parser: argparse.ArgumentParser) -> None:
    """Add the flags of the ``route`` subcommand."""
    add_catalog_argument(parser)
    parser.add_argument("texts", nargs="*", metavar="TEXT", help="messages (default: one per stdin line)")
    parser.add_argument("--json", action="store_true", help="one JSON object per message")
    parser.add_argument("--conversation", metavar="FILE",
                        help="decide the latest user message of each conversation in FILE as the sidecar does: a "
                             "JSON list of {role, content} messages or {\"messages\": [...]}, or JSON lines of "
                             "those (one conversation a line)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Print a decision per message."""
    gate = load_gate(catalog_arg(args))
    if args.conversation:
        if args.texts:
            raise UserError("give either messages or --conversation FILE, not both")
        for conversation in read_conversations(args.conversation):
            _emit_turn(gate.decide_conversation(conversation), args.json)
        return 0
    if args.texts:
        _emit(gate.decide_many(args.texts), args.json)
        return 0
    batch: list[str] = []
    for line in sys.stdin:
        batch.append(line.rstrip("\n"))
        if len(batch) == STDIN_BATCH:
            _emit(gate.decide_many(batch), args.json)
            batch = []
    _emit(gate.decide_many(batch), args.json)
    return 0


def _emit(decisions: list[Decision], as_json: bool) -> None:
    for decision in decisions:
        if as_json:
            print_json(decision.to_dict())
            continue
        verdict = "ACCEPT" if decision.accepted else "REJECT"
        why = f"  ({decision.reason})" if decision.reason else ""
        print(f"{verdict}  {decision.intent or '-':<28} score={decision.score:.3f} "
              f"threshold={decision.threshold:.3f}{why}  {decision.text}", flush=True)


def read_conversations(path: str) -> list[list[dict]]:
    """The conversations of a file (see ``--conversation``), each a list of messages."""
    try:
        with open(path, encoding="utf-8-sig") as handle:
            text = handle.read()
    except OSError as error:
        raise UserError(f"{path}: cannot read the conversation file: {error.strerror or error}") from error
    try:
        documents = [(1, json.loads(text))]
    except json.JSONDecodeError:
        documents = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    documents.append((number, json.loads(line)))
                except json.JSONDecodeError as error:
                    raise UserError(f"{path}:{number}: not JSON ({error.msg}); give one conversation per line "
                                    "or one JSON document") from error
    if len(documents) == 1 and isinstance(documents[0][1], list) and documents[0][1] \
            and all(isinstance(item, dict) and "messages" in item for item in documents[0][1]):
        documents = [(1, item) for item in documents[0][1]]  # a JSON list of conversations
    conversations = []
    for number, document in documents:
        messages = document.get("messages") if isinstance(document, dict) else document
        if not isinstance(messages, list) or not all(isinstance(message, dict) for message in messages):
            raise UserError(f"{path}:{number}: a conversation is a list of {{role, content}} messages or an object "
                            "with \"messages\"")
        if not any(str(message.get("role", "")).strip().lower() == "user" for message in messages):
            raise UserError(f"{path}:{number}: the conversation has no user message to decide")
        conversations.append(messages)
    if not conversations:
        raise UserError(f"{path}: no conversation in the file")
    return conversations


def _emit_turn(turn, as_json: bool) -> None:
    decision = turn.decision
    if as_json:
        print_json({**decision.to_dict(), "followup": turn.followup, "context": list(turn.context)})
        return
    verdict = "ACCEPT" if decision.accepted else "REJECT"
    why = "  (follow-up)" if turn.followup else (f"  ({decision.reason})" if decision.reason else "")
    print(f"{verdict}  {decision.intent or '-':<28} score={decision.score:.3f} "
          f"threshold={decision.threshold:.3f}{why}  {decision.text}", flush=True)
