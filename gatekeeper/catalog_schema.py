"""The intent catalog's schema: typed models that a YAML catalog must fit.

Validation lives here (pydantic); turning YAML into these models, with file and
line numbers in every error, lives in :mod:`gatekeeper.catalog`.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr,
                      field_validator)

SCHEMA_VERSION = 1

Threshold = Union[StrictFloat, StrictInt, Literal["auto"]]


def _non_blank(text: str) -> str:
    if not text.strip():
        raise ValueError("the text is empty; write a real user message or delete the line")
    return text


#: An example utterance: a string with at least one visible character.
Utterance = Annotated[StrictStr, AfterValidator(_non_blank)]


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


class RejectReply(_Strict):
    """The canned reply sent instead of calling the LLM, per language."""

    zh: StrictStr = "抱歉，这个问题超出了我的服务范围。请问有什么业务相关的问题我可以帮您？"
    en: StrictStr = "Sorry, that is outside what I can help with here. Is there anything about our services I can help you with?"


class Defaults(_Strict):
    """Settings for the intents of one file, which an intent may override.

    In a directory catalog each file's defaults apply to its own intents, so a
    bot serving two products can give each its own reject reply.
    """

    threshold: Threshold = "auto"
    reject_reply: RejectReply = RejectReply()
    #: Longer messages are truncated to this many characters before embedding.
    max_chars: StrictInt = Field(default=2000, gt=0)

    @field_validator("threshold")
    @classmethod
    def _threshold_in_range(cls, value: Threshold) -> Threshold:
        return _check_threshold(value)


class Intent(_Strict):
    """One thing the service handles."""

    name: StrictStr = Field(pattern=r"^[A-Za-z0-9_.\-]+$", max_length=80)
    description: StrictStr = ""
    examples: list[Utterance] = []
    threshold: Union[StrictFloat, StrictInt, None] = None
    tags: list[StrictStr] = []
    #: The canned reply when a message nearest to this intent is rejected; by default
    #: the ``defaults.reject_reply`` of the file that declares the intent.
    reject_reply: RejectReply | None = None

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

    def intent_names(self) -> list[str]:
        """Intent names in catalog order."""
        return [intent.name for intent in self.intents]


def intent_name_for_label(label: str) -> str:
    """A dataset label made safe as an intent name (letters, digits, '_', '-', '.')."""
    return "".join(ch if ch.isalnum() and ch.isascii() or ch in "_-." else "_" for ch in label) or "intent"


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

