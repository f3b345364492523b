"""The sidecar's settings: one typed model, filled from flags > env > config file > defaults.

:class:`ServerSettings` is the single source of truth. Every field can be set
in a YAML config file (same key), by ``GATEKEEPER_<KEY>`` in the environment,
and, unless it is a secret, by a ``--key-with-dashes`` flag generated from the
field itself (so flags, env and file can never drift apart). Secrets
(``upstream_api_key``, ``admin_token``) are never accepted as flags, which
would show them in ``ps``; they are masked whenever settings are printed.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Literal, Mapping, get_args, get_origin
from urllib.parse import parse_qsl, unquote, unquote_plus, urlencode, urlsplit, urlunsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from gatekeeper import environment
from gatekeeper.catalog.loader import default_catalog_path
from gatekeeper.core.conversation_policy import FollowupPolicy
from gatekeeper.errors import UserError

MASK = "***"

#: The conversation rule's defaults: the sidecar's conversation settings start from them.
_RULE = FollowupPolicy()

Mode = Literal["enforce", "shadow"]
EmbeddingFailurePolicy = Literal["fail_open", "fail_closed"]
TextLogging = Literal["redact", "full", "hash"]


class ServerSettings(BaseModel):
    """Everything ``gatekeeper serve`` can be configured with."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    catalog: str = Field(default_factory=default_catalog_path,
                         description="catalog file or directory")
    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8080, ge=0, le=65535, description="port to listen on")
    mode: Mode = Field("enforce", description="enforce: answer off-topic messages with the canned reply; "
                                              "shadow: forward everything, record what would be rejected")
    upstream_base_url: str | None = Field(None, description="OpenAI-compatible base URL, e.g. "
                                                            "http://127.0.0.1:8000/v1 (unset: /v1/gate only)")
    upstream_api_key: SecretStr | None = Field(None, description="key sent upstream when the caller sends no "
                                                                 "Authorization header (env or file only)")
    upstream_timeout_s: float = Field(60.0, gt=0, description="upstream read timeout: time to the response "
                                                              "headers and between stream chunks (504 past it)")
    upstream_connect_timeout_s: float = Field(5.0, gt=0, description="upstream connect timeout")
    upstream_keepalive_expiry_s: float = Field(4.0, gt=0, description="idle upstream connections are closed "
                                               "after this long; keep it below the upstream server's keep-alive "
                                               "timeout (uvicorn-based servers: 5 s), so a reused connection is "
                                               "never one the upstream is closing")
    upstream_deadline_s: float = Field(300.0, gt=0, description="the upstream's whole response (headers and body "
                                       "or stream) must arrive within this long: a trickle past it ends with 504, "
                                       "or an SSE error event and [DONE]")
    embedding_failure: EmbeddingFailurePolicy = Field("fail_open", description="when the encoder fails: "
                                                      "fail_open forwards, fail_closed sends the canned reply")
    gate_timeout_s: float = Field(2.0, gt=0, description="longest wait for a decision (encoder queue and calls "
                                  "included); past it the embedding_failure policy applies (/v1/gate: 503)")
    max_body_bytes: int = Field(1_048_576, gt=0, description="larger request bodies get 413")
    body_timeout_s: float = Field(15.0, gt=0, description="a request's whole body must arrive within this long "
                                  "after its headers, else 408 and the connection is closed")
    max_buffered_body_bytes: int = Field(33_554_432, gt=0, description="request bodies held at once, all requests "
                                         "together (bytes); past it 503 overloaded with Retry-After. Keep it at "
                                         "least max_body_bytes")
    threads: int = Field(1, ge=1, description="CPU threads per encoder call")
    batch_max_size: int = Field(64, ge=1, description="most messages per micro-batched encoder call")
    batch_wait_us: int = Field(300, ge=0, description="under load, how long to collect a micro-batch "
                                                      "(microseconds); an idle server never waits")
    batch_max_chars: int = Field(1024, ge=1, description="most characters per encoder call (at least one message): "
                                 "a big request is encoded in chunks, taking turns with the others")
    long_text_chars: int = Field(256, ge=1, description="messages longer than this are encoded on a second encoder "
                                 "thread, so short ones never wait behind them")
    max_queued_texts: int = Field(1024, ge=1, description="messages waiting for the encoder at most, a quarter of "
                                  "it for one request; past it requests get 503 overloaded with Retry-After")
    context_turns: int = Field(_RULE.context_turns, ge=0, description="earlier user turns read for the "
                               "conversation's topic (0: gate the latest message alone)")
    followup_off_topic_similarity: float = Field(_RULE.off_topic_similarity, ge=-1, le=1, description="a message "
                                                 "in an on-topic conversation is off topic when an out-of-scope "
                                                 "example is this similar (cosine) and the head agrees")
    followup_answer_similarity: float = Field(_RULE.answer_similarity, ge=-1, le=1, description="the same after a "
                                              "question of the bot (an answer may resemble an off-topic message)")
    decision_log: str | None = Field(None, description="append sampled decisions to this JSONL file")
    decision_log_sample: float = Field(1.0, ge=0, le=1, description="share of decisions logged")
    decision_log_text: TextLogging = Field("redact", description="message text in the decision log: redact "
                                           "(phone, e-mail, ID and card numbers masked), full, or hash (sha256 "
                                           "only: nothing to review or retune on)")
    decision_log_max_bytes: int = Field(104_857_600, ge=0, description="rotate the decision log when it reaches "
                                        "this size (bytes; 0: never rotate)")
    decision_log_backups: int = Field(5, ge=1, description="rotated decision logs kept (decisions.jsonl.1 ...)")
    admin_token: SecretStr | None = Field(None, description="bearer token for POST /admin/reload "
                                                            "(env or file only; unset: endpoint disabled)")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="log level")
    access_log_sample: float = Field(0.0, ge=0, le=1, description="share of HTTP requests logged as JSON 'access' "
                                     "lines (method, path, status, ms, request id) at info level; 0: none")
    keep_alive_s: int = Field(10, ge=1, description="idle client connections are kept this long (uvicorn "
                                                    "timeout_keep_alive); keep it above the callers' and load "
                                                    "balancer's idle expiry (httpx and the openai client: 5 s)")
    header_timeout_s: float = Field(10.0, gt=0, description="a client must send a request's headers within this "
                                    "long (from connecting, or from the first byte of its next request), else the "
                                    "connection is closed")
    graceful_shutdown_s: int = Field(25, ge=0, description="on SIGTERM, how long requests and streams in flight "
                                                           "may finish before they are cut; keep it below the "
                                                           "orchestrator's grace period (Kubernetes: 30 s)")


#: Fields never taken from the command line.
SECRET_FIELDS = frozenset(name for name, field in ServerSettings.model_fields.items()
                          if SecretStr in get_args(field.annotation))


def env_name(field: str) -> str:
    """The environment variable of a settings field: ``GATEKEEPER_`` + upper-case name."""
    return environment.PREFIX + field.upper()


#: How to configure an upstream, for the errors of requests that need one.
UPSTREAM_HINT = f"start with --upstream-base-url URL or set {env_name('upstream_base_url')}"
#: Seconds a client should wait before retrying a request shed under overload (the ``Retry-After`` header).
RETRY_AFTER_S = 1


def add_settings_flags(parser: argparse.ArgumentParser) -> None:
    """Add a ``--flag`` for every non-secret field (default None, so unset flags don't override)."""
    parser.add_argument("--config", metavar="FILE.yaml", default=None,
                        help=f"YAML config file with settings keys (default: ${environment.CONFIG})")
    for name, field in ServerSettings.model_fields.items():
        if name in SECRET_FIELDS:
            continue
        flag = "--" + name.replace("_", "-")
        annotation = field.annotation
        choices = _literal_choices(annotation)
        help_text = f"{field.description} (env {env_name(name)})"
        if choices:
            parser.add_argument(flag, choices=choices, default=None, help=help_text)
        else:
            parser.add_argument(flag, type=_scalar_type(annotation), default=None, help=help_text)


def resolve_settings(flags: Mapping[str, Any], env: Mapping[str, str] | None = None,
                     config_file: str | Path | None = None) -> tuple[ServerSettings, dict[str, str]]:
    """Merge defaults < config file < env < flags into :class:`ServerSettings`.

    ``flags`` maps field names to values, None meaning "not given". The config
    file defaults to ``$GATEKEEPER_CONFIG``. Returns the settings and, per
    field, where its value came from ('default', 'file', 'env' or 'flag').
    Raises :class:`UserError` naming the field and source of any bad value.
    """
    env = environment.snapshot() if env is None else env
    config_file = config_file or env.get(environment.CONFIG)
    layers: list[tuple[str, dict[str, Any]]] = []
    if config_file:
        layers.append(("file", _read_config_file(Path(config_file))))
    layers.append(("env", {name: env[env_name(name)] for name in ServerSettings.model_fields
                           if env.get(env_name(name), "") != ""}))
    layers.append(("flag", {name: value for name, value in flags.items()
                            if value is not None and name in ServerSettings.model_fields
                            and name not in SECRET_FIELDS}))
    values: dict[str, Any] = {}
    sources = {name: "default" for name in ServerSettings.model_fields}
    for source, layer in layers:
        values.update(layer)
        sources.update(dict.fromkeys(layer, source))
    try:
        return ServerSettings.model_validate(values), sources
    except ValidationError as error:
        problems = []
        for item in error.errors():
            name = str(item["loc"][0]) if item["loc"] else "?"
            where = {"file": f"config file {config_file}", "env": env_name(name),
                     "flag": "--" + name.replace("_", "-")}.get(sources.get(name, ""), "settings")
            problems.append(f"{name} (from {where}): {item['msg']}")
        raise UserError("invalid server settings:\n  " + "\n  ".join(problems)) from None


def masked(settings: ServerSettings) -> dict[str, Any]:
    """The settings as plain data with every secret masked (also a password inside the upstream URL)."""
    data = settings.model_dump()
    for name in SECRET_FIELDS:
        data[name] = MASK if data[name] is not None else None
    if settings.upstream_base_url:
        data["upstream_base_url"] = mask_url(settings.upstream_base_url)
    return data


def mask_url(url: str) -> str:
    """``url`` with its ``user:password@`` part and every query value masked (``?api-key=***``)."""
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None:
        parts = parts._replace(netloc=f"{MASK}@" + parts.netloc.rpartition("@")[2])
    if parts.query:
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        parts = parts._replace(query=urlencode([(key, MASK) for key, _ in pairs], safe="*"))
    return urlunsplit(parts)


def url_secrets(url: str) -> list[str]:
    """What :func:`mask_url` hides (user name, password, query values), as written in ``url`` and decoded."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    written = userinfo.split(":", 1) if userinfo else []
    written += [pair.partition("=")[2] for pair in parts.query.split("&")]
    return sorted({form for value in written if value for form in (value, unquote(value), unquote_plus(value))},
                  key=len, reverse=True)


def redact(text: str, secrets: list[str]) -> str:
    """``text`` with every occurrence of each of ``secrets`` replaced by ``***``."""
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def describe(settings: ServerSettings, sources: Mapping[str, str]) -> str:
    """The effective configuration as aligned ``key = value  (source)`` lines, secrets masked."""
    data = masked(settings)
    width = max(map(len, data))
    return "\n".join(f"{name:<{width}} = {data[name]!s:<40} ({sources.get(name, 'default')})" for name in data)


def _read_config_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"{path}: config file not found; pass --config FILE.yaml or unset {environment.CONFIG}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise UserError(f"{path}: not valid YAML ({error})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: the config file must be a mapping of settings keys to values")
    unknown = sorted(set(data) - set(ServerSettings.model_fields))
    if unknown:
        raise UserError(f"{path}: unknown settings {', '.join(unknown)}; known: "
                        f"{', '.join(ServerSettings.model_fields)}")
    return data


def _literal_choices(annotation: Any) -> list[str] | None:
    if get_origin(annotation) is Literal:
        return list(get_args(annotation))
    return None


def _scalar_type(annotation: Any) -> type:
    for candidate in (int, float):
        if annotation is candidate:
            return candidate
    return str
