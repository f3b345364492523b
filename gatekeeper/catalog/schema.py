"""The intent catalog's schema: typed models that a YAML catalog must fit.

Validation lives here (pydantic); turning YAML into these models, with file and
line numbers in every error, lives in :mod:`gatekeeper.catalog.loader`.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Annotated, Literal, Union

from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr,
                      field_validator, model_validator)

SCHEMA_VERSION = 1

Threshold = Union[StrictFloat, StrictInt, Literal["auto"]]


def _non_blank(text: str) -> str:
    if not text.strip():
        raise ValueError("the text is empty; write a real user message or delete the line")
    return text


#: An example utterance: a string with at least one visible character.
Utterance = Annotated[StrictStr, AfterValidator(_non_blank)]


#: Longest intent name, in characters after normalisation.
MAX_INTENT_NAME = 80


def normalise_intent_name(name: str) -> str:
    """An intent name as the gate stores it: NFKC-normalised, surrounding white space removed.

    Any printable Unicode is kept ("退货申请", "bill inquiry", "Rückerstattung"),
    so a dataset's labels become intent names unchanged. Use
    :func:`intent_name_problem` to check the result.
    """
    return unicodedata.normalize("NFKC", name).strip()


def intent_key(name: str) -> str:
    """What makes two intent names the same intent: normalised and case-folded ("Invoice" == "invoice ")."""
    return normalise_intent_name(name).casefold()


def intent_name_problem(name: str) -> str | None:
    """Why ``name`` (already normalised) cannot be an intent name, with the fix; None if it can."""
    if not name:
        return "the intent name is empty; give the intent a name such as 'bill_inquiry' or '话费查询'"
    if len(name) > MAX_INTENT_NAME:
        return f"the intent name has {len(name)} characters; use at most {MAX_INTENT_NAME}"
    bad = sorted({f"U+{ord(ch):04X}" for ch in name if unicodedata.category(ch) in _UNPRINTABLE})
    if bad:
        return (f"the intent name contains control or invisible characters ({', '.join(bad)}); "
                "retype it with printable characters only")
    return None


#: Unicode categories refused in intent names: controls, surrogates, line/paragraph separators, unassigned.
_UNPRINTABLE = {"Cc", "Cs", "Co", "Cn", "Zl", "Zp"}


def _valid_intent_name(name: str) -> str:
    name = normalise_intent_name(name)
    problem = intent_name_problem(name)
    if problem:
        raise ValueError(problem)
    return name


#: An intent name: any printable Unicode text, stored NFKC-normalised and trimmed.
IntentName = Annotated[StrictStr, AfterValidator(_valid_intent_name)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSettings(_Strict):
    """Which sentence encoder embeds the catalog and the messages."""

    backend: Literal["use-multilingual", "sentence-transformers", "openai"] = "use-multilingual"
    #: sentence-transformers: a local model folder or an installed model package name.
    #: openai: the model name sent to the endpoint.
    model: StrictStr | None = None
    #: openai: base URL of an OpenAI-compatible /v1/embeddings endpoint.
    base_url: StrictStr | None = None
    #: openai: name of the environment variable holding the API key (never the key itself).
    api_key_env: StrictStr = "GATEKEEPER_EMBEDDING_API_KEY"
    #: openai: Matryoshka truncation passed as ``dimensions``.
    dimensions: StrictInt | None = Field(default=None, gt=0)
    #: Instruction prefixed to queries (not to catalog examples), for instruction-aware models.
    query_instruction: StrictStr = ""
    batch_size: StrictInt = Field(default=64, gt=0)
    timeout_s: Union[StrictFloat, StrictInt] = Field(default=30.0, gt=0)
    max_retries: StrictInt = Field(default=3, ge=0)


class ScorerSettings(_Strict):
    """How messages are scored against the catalog."""

    #: Give the head character n-gram features of the text beside the embedding
    #: (more accurate; fitting a large catalog takes longer: docs/quality.md, docs/performance.md).
    lexical_features: StrictBool = True


def _check_replies(value: str | dict[str, str]) -> str | dict[str, str]:
    if isinstance(value, str):
        return _non_blank_reply(value)
    if not value:
        raise ValueError("give the reply as one string (every language) or as language: text pairs "
                         "such as zh: ..., en: ..., default: ...")
    for language, text in value.items():
        if not _LANGUAGE_KEY.fullmatch(language):
            raise ValueError(f"'{language}' is not a language key; use codes such as zh, en, ja, ko "
                             "(lower case) or 'default' for every other language")
        _non_blank_reply(text)
    return value


def _non_blank_reply(text: str) -> str:
    if not text.strip():
        raise ValueError("the reply is empty; write the text the user should see")
    return text


_LANGUAGE_KEY = re.compile(r"default|[a-z]{2,3}(-[a-z0-9]{2,8})?")

#: A reply: one string for every language, or language code -> text with an optional ``default``.
Replies = Annotated[Union[StrictStr, dict[StrictStr, StrictStr]], AfterValidator(_check_replies)]

DEFAULT_REJECT_REPLY = {
    "zh": "抱歉，这个问题超出了我的服务范围。请问有什么业务相关的问题我可以帮您？",
    "en": "Sorry, that is outside what I can help with here. Is there anything about our services I can help "
          "you with?",
    "default": "Sorry, that is outside what I can help with here. Is there anything about our services I can "
               "help you with?",
}

DEFAULT_HANDOFF_REPLY = {
    "zh": "好的，正在为您转接人工客服，请稍候。",
    "en": "Sure, I'm passing you to a member of our team now. Please hold on.",
    "default": "Sure, I'm passing you to a member of our team now. Please hold on.",
}


def pick_reply(replies: str | dict[str, str], language: str) -> str:
    """The reply for ``language``: its own text, else ``default``, else English, else the first one given."""
    if isinstance(replies, str):
        return replies
    for key in (language, language.split("-")[0], "default", "en"):
        if key in replies:
            return replies[key]
    return next(iter(replies.values()))


#: What the gate does with a message accepted as an intent (README, "Actions and the built-in packs").
#: ``continue``: a message with no topic of its own ("好的", "ok") follows the conversation: forwarded when
#: the earlier user turns are in scope, rejected when they are not, answered with ``reply`` when it opens one.
Action = Literal["forward", "reply", "handoff", "continue"]

#: ``out_of_scope_pack`` / ``conversation_pack``: use the built-in pack, or not.
PackSetting = Literal["default", "none"]


class Defaults(_Strict):
    """Settings for the intents of one file, which an intent may override.

    In a directory catalog each file's defaults apply to its own intents, so a
    bot serving two products can give each its own reject reply.
    """

    threshold: Threshold = "auto"
    reject_reply: Replies = Field(default_factory=lambda: dict(DEFAULT_REJECT_REPLY))
    #: Longer messages are truncated to this many characters before embedding.
    max_chars: StrictInt = Field(default=2000, gt=0)

    @field_validator("threshold")
    @classmethod
    def _threshold_in_range(cls, value: Threshold) -> Threshold:
        return _check_threshold(value)


class Intent(_Strict):
    """One thing the service handles."""

    name: IntentName
    description: StrictStr = ""
    examples: list[Utterance] = []
    threshold: Union[StrictFloat, StrictInt, None] = None
    #: Labels carried into every decision on this intent (``/v1/gate`` output, decision log), so a bot
    #: can route on them (e.g. ``[billing]``).
    tags: list[StrictStr] = []
    #: forward: the LLM answers (default); reply: answer with ``reply``, no LLM call;
    #: handoff: answer with ``reply`` and mark the response for a human agent;
    #: continue: follow the conversation's earlier turns (see :data:`Action`).
    action: Action = "forward"
    #: The answer for ``action: reply`` and ``continue`` (required) or ``handoff`` (a default hand-over
    #: message otherwise).
    reply: Replies | None = None
    #: The canned reply when a message nearest to this intent is rejected; by default
    #: the ``defaults.reject_reply`` of the file that declares the intent.
    reject_reply: Replies | None = None

    @model_validator(mode="after")
    def _reply_fits_action(self) -> "Intent":
        if self.action in ("reply", "continue") and self.reply is None:
            raise ValueError(f"action '{self.action}' needs a 'reply' text (one string, or zh: / en: / default: "
                             "texts)")
        if self.action == "forward" and self.reply is not None:
            raise ValueError("'reply' is only used with action 'reply' or 'handoff'; set one of them or "
                             "delete the reply")
        return self

    def answer(self, language: str) -> str | None:
        """The canned answer of a reply, handoff or continue intent in ``language``; None for forward intents."""
        if self.action == "forward":
            return None
        return pick_reply(self.reply or DEFAULT_HANDOFF_REPLY, language)

    @field_validator("threshold")
    @classmethod
    def _threshold_in_range(cls, value: float | None) -> float | None:
        return None if value is None else _check_threshold(value)


class CatalogFile(_Strict):
    """One YAML file of a catalog; a directory of them is merged into a :class:`Catalog`."""

    version: Literal[1] = SCHEMA_VERSION
    name: StrictStr | None = None
    model: ModelSettings | None = None
    scorer: ScorerSettings | None = None
    defaults: Defaults | None = None
    #: Add the built-in bilingual out-of-scope pack to the negatives (``default``) or not (``none``).
    out_of_scope_pack: PackSetting | None = None
    #: Add the built-in conversation-control intents (greeting, thanks, goodbye, human_agent,
    #: continuation); an intent of the same name in the catalog replaces the pack's.
    conversation_pack: PackSetting | None = None
    intents: list[Intent] = []
    out_of_scope: list[Utterance] = []


class Catalog(_Strict):
    """A complete, validated catalog (one file or several merged)."""

    name: str
    model: ModelSettings
    scorer: ScorerSettings
    defaults: Defaults
    intents: list[Intent]
    out_of_scope: list[str]
    sources: list[str]
    out_of_scope_pack: PackSetting = "default"
    conversation_pack: PackSetting = "default"
    #: Names of the intents that come from the conversation pack.
    pack_intents: list[str] = []
    #: Things that work but deserve attention (``file:line: ...``), shown by ``gatekeeper build``.
    warnings: list[str] = []
    #: The file or folder it was loaded from (None when built in code or read from a saved gate): where its built
    #: index and its tuning are kept.
    path: str | None = None

    def intent_names(self) -> list[str]:
        """Intent names in catalog order."""
        return [intent.name for intent in self.intents]

    def intent(self, name: str) -> Intent:
        """The intent called ``name``."""
        return self.intents[self.intent_names().index(name)]




def _check_threshold(value: float | str) -> float | str:
    if isinstance(value, str):
        return value
    if not -1.0 <= float(value) <= 1.0:
        raise ValueError(
            f"threshold {value} is outside [-1, 1]; use a score between -1 and 1 "
            "(scores are probabilities or cosine similarities), or in 'defaults' 'auto' to calibrate it "
            "from the catalog"
        )
    return float(value)

