"""Server settings: one model, precedence flags > env > file > defaults, secrets masked, flags generated."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from gatekeeper.errors import UserError
from gatekeeper.server.config import (
    MASK,
    SECRET_FIELDS,
    ServerSettings,
    add_settings_flags,
    describe,
    env_name,
    mask_url,
    masked,
    resolve_settings,
)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults():
    settings, sources = resolve_settings({}, env={})
    assert (settings.host, settings.port, settings.mode, settings.embedding_failure) == ("127.0.0.1", 8080, "enforce",
                                                                                          "fail_open")
    assert settings.upstream_base_url is None and settings.admin_token is None
    assert set(sources.values()) == {"default"}


def test_the_sidecar_reads_conversations_with_the_rule_s_own_defaults():
    """One source of truth: the sidecar, /v1/gate, route --conversation, eval and tune decide a conversation alike."""
    from gatekeeper.core.conversation_policy import FollowupPolicy

    settings, _ = resolve_settings({}, env={})
    rule = FollowupPolicy()
    assert (settings.context_turns, settings.followup_off_topic_similarity, settings.followup_answer_similarity) == (
        rule.context_turns, rule.off_topic_similarity, rule.answer_similarity)


def test_precedence_flags_over_env_over_file_over_defaults(tmp_path):
    config = write(tmp_path / "gk.yaml", "port: 7000\nmode: shadow\nthreads: 2\ncontext_turns: 3\n")
    env = {"GATEKEEPER_PORT": "7100", "GATEKEEPER_MODE": "enforce"}
    settings, sources = resolve_settings({"port": 7200, "mode": None}, env=env, config_file=config)
    assert settings.port == 7200 and sources["port"] == "flag"
    assert settings.mode == "enforce" and sources["mode"] == "env"
    assert settings.threads == 2 and sources["threads"] == "file"
    assert settings.context_turns == 3
    assert settings.batch_max_size == 64 and sources["batch_max_size"] == "default"


def test_config_file_from_environment(tmp_path):
    config = write(tmp_path / "gk.yaml", "upstream_timeout_s: 2.5\n")
    settings, sources = resolve_settings({}, env={"GATEKEEPER_CONFIG": str(config)})
    assert settings.upstream_timeout_s == 2.5 and sources["upstream_timeout_s"] == "file"


def test_secrets_are_never_flags_and_always_masked():
    assert SECRET_FIELDS == {"upstream_api_key", "admin_token"}
    parser = argparse.ArgumentParser()
    add_settings_flags(parser)
    options = {option for action in parser._actions for option in action.option_strings}
    assert "--upstream-api-key" not in options and "--admin-token" not in options
    assert {"--catalog", "--host", "--port", "--upstream-base-url", "--mode", "--config"} <= options
    settings, sources = resolve_settings({"admin_token": "from-a-flag"}, env={
        "GATEKEEPER_UPSTREAM_API_KEY": "sk-very-secret", "GATEKEEPER_ADMIN_TOKEN": "tok-secret",
        "GATEKEEPER_UPSTREAM_BASE_URL": "http://user:hunter2@127.0.0.1:8000/v1"})
    assert settings.admin_token.get_secret_value() == "tok-secret"  # the flag value was ignored
    printed = describe(settings, sources)
    for secret in ("sk-very-secret", "tok-secret", "hunter2", "user:"):
        assert secret not in printed
    assert masked(settings)["upstream_api_key"] == MASK
    assert masked(settings)["upstream_base_url"] == f"http://{MASK}@127.0.0.1:8000/v1"
    assert "(env)" in printed.splitlines()[[line.split()[0] for line in printed.splitlines()].index("admin_token")]
    assert repr(settings).count("sk-very-secret") == 0


def test_mask_url_leaves_plain_urls_alone():
    assert mask_url("http://127.0.0.1:8000/v1") == "http://127.0.0.1:8000/v1"


def test_parsed_flags_feed_the_settings():
    parser = argparse.ArgumentParser()
    add_settings_flags(parser)
    args = parser.parse_args(["--port", "9001", "--mode", "shadow", "--upstream-timeout-s", "1.5",
                              "--decision-log-text", "full"])
    settings, _ = resolve_settings(vars(args), env={})
    assert (settings.port, settings.mode, settings.upstream_timeout_s, settings.decision_log_text) == (
        9001, "shadow", 1.5, "full")
    with pytest.raises(SystemExit):
        parser.parse_args(["--mode", "sometimes"])


@pytest.mark.parametrize(("env", "message"), [
    ({"GATEKEEPER_PORT": "eighty"}, "port (from GATEKEEPER_PORT)"),
    ({"GATEKEEPER_EMBEDDING_FAILURE": "maybe"}, "embedding_failure (from GATEKEEPER_EMBEDDING_FAILURE)"),
    ({"GATEKEEPER_DECISION_LOG_SAMPLE": "2"}, "decision_log_sample"),
])
def test_bad_values_name_their_source(env, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve_settings({}, env=env)


@pytest.mark.parametrize(("text", "message"), [
    ("prot: 80\n", "unknown settings prot"),
    ("- a\n- b\n", "must be a mapping"),
    ("port: [\n", "not valid YAML"),
])
def test_bad_config_files(tmp_path, text, message):
    with pytest.raises(UserError, match=message):
        resolve_settings({}, env={}, config_file=write(tmp_path / "gk.yaml", text))
    with pytest.raises(UserError, match="config file not found"):
        resolve_settings({}, env={}, config_file=tmp_path / "absent.yaml")


def test_every_field_has_an_env_name_and_a_description():
    for name, field in ServerSettings.model_fields.items():
        assert env_name(name) == "GATEKEEPER_" + name.upper()
        assert field.description


def test_unwritable_decision_log_is_a_clear_error(tmp_path):
    from gatekeeper.server.decision_log import DecisionLog

    with pytest.raises(UserError, match="point decision_log at a writable file"):
        DecisionLog(tmp_path)  # a directory, not a file


def test_unknown_log_level_is_a_clear_error_not_a_traceback(tmp_path):
    import os
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "gatekeeper", "import", str(tmp_path / "none.jsonl"),
                             "--out", str(tmp_path / "x.yaml")], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "GATEKEEPER_LOG_LEVEL": "trace"})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "use one of debug, info, warning, error" in result.stderr
