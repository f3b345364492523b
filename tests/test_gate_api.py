"""The public Python API: ``from gatekeeper import Gate, ...``, fitted like a scikit-learn estimator.

Real model, real FAISS, the small bilingual shop catalog of test_tune_safety.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

import gatekeeper
from gatekeeper import Decision, GatekeeperError, Gate, Policy, load_catalog
from gatekeeper.errors import UserError
from gatekeeper.gate import MANIFEST, NotFittedError
from tests.fake_embedder import HashedNgramEmbedder
from tests.server_fixtures import write_catalog
from tests.test_tune_safety import EARLIER, FOLLOW_UP, IN_SCOPE, OFF_TOPIC, SHOP

ROWS = [(text, label) for label, texts in IN_SCOPE.items() for text in texts] + [(text, "chat") for text in OFF_TOPIC]


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    path = tmp_path / "shop.yaml"
    write_catalog(path, SHOP)
    return path


@pytest.fixture
def shop_gate(shop: Path, use_embedder) -> Gate:
    return Gate(embedder=use_embedder).fit(shop)


@pytest.fixture
def plumbing_gate(shop: Path) -> Gate:
    """The shop catalog fitted over the in-process test embedder: for saving and loading, not for decisions."""
    return Gate(embedder=HashedNgramEmbedder()).fit(shop)


def test_the_public_names_are_exported_and_import_lazily():
    assert {"Gate", "Decision", "Policy", "load_catalog", "GatekeeperError"} <= set(gatekeeper.__all__)
    probe = ("import sys, gatekeeper; "
             "print(sorted(m for m in ('sklearn', 'faiss', 'gatekeeper.gate') if m in sys.modules))")
    imported = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert imported.stdout.strip() == "[]"  # `import gatekeeper` (and so `gatekeeper --help`) loads none of them
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        gatekeeper.Nope  # noqa: B018


def test_parameters_are_kept_and_fitted_state_ends_in_an_underscore(shop):
    embedder = HashedNgramEmbedder()
    gate = Gate(embedder=embedder, threads=2)
    assert gate.get_params() == {"embedder": embedder, "threads": 2, "rebuild": False}
    assert not gate.is_fitted and "fitted" not in repr(gate)
    with pytest.raises(NotFittedError, match="call fit"):
        gate.decide("where is my order")
    assert isinstance(NotFittedError("x"), GatekeeperError)
    assert gate.fit(shop) is gate  # fit returns the gate itself
    assert gate.get_params()["embedder"] is embedder  # parameters untouched by fitting
    assert gate.catalog_.name == "shop" and gate.catalog_path_ == str(shop)
    assert gate.tuning_status_ == "none" and gate.router_.thresholds.source == "auto"
    assert "fitted on 'shop': 2 intents" in repr(gate)


def test_decide_decide_many_and_their_async_twins_agree(shop_gate):
    messages = ["我的快递到哪了", "I want my money back", "tell me a joke about cats", "", 42]
    many = shop_gate.decide_many(messages)
    assert [type(d) for d in many] == [Decision] * 5
    assert [d.intent for d in many[:2]] == ["查物流", "退款"] and all(d.accepted for d in many[:2])
    assert not many[2].accepted
    assert [d.reason for d in many[3:]] == ["empty_input", "not_text"]
    assert shop_gate.decide(messages[1]) == many[1]
    assert asyncio.run(shop_gate.adecide(messages[0])) == many[0]
    assert asyncio.run(shop_gate.adecide_many(messages)) == many


def test_decide_conversation_reads_the_earlier_turns_like_the_sidecar(telecom_gate):
    conversation = [{"role": "user", "content": EARLIER}, {"role": "assistant", "content": "您好，请问是哪个号码？"},
                    {"role": "user", "content": FOLLOW_UP}]
    turn = telecom_gate.decide_conversation(conversation)
    assert turn.decision.action == "forward" and turn.followup  # forwarded through the conversation
    assert telecom_gate.decide(FOLLOW_UP).action == "reply"  # alone: the continuation intent's question back
    switched = conversation[:2] + [{"role": "user", "content": "算了，给我写一首关于大海的诗吧"}]
    assert not telecom_gate.decide_conversation(switched).decision.accepted
    assert asyncio.run(telecom_gate.adecide_conversation(conversation)) == turn
    assert telecom_gate.decide_turn(FOLLOW_UP, [EARLIER], replies=["您好，请问是哪个号码？"]) == turn


def test_a_catalog_object_fits_in_memory_without_writing_anything(shop, use_embedder, tmp_path, monkeypatch):
    state = tmp_path / "state"
    monkeypatch.setenv("GATEKEEPER_STATE_DIR", str(state))
    catalog = load_catalog(shop).model_copy(update={"path": None})
    gate = Gate(embedder=use_embedder).fit(catalog)
    assert gate.catalog_path_ is None and gate.rebuilt_
    assert gate.decide("where is my order").intent == "查物流"
    assert not state.exists()


def test_tune_then_save_and_load_keep_every_decision(shop, use_embedder, tmp_path):
    gate = Gate(embedder=use_embedder).fit(shop).tune(ROWS, Policy(max_false_reject=0.1), oos_labels=["chat"])
    assert gate.tuning_status_ == "tuned" and gate.router_.thresholds.source == "tuned"
    assert gate.tuning_preview_.rows == len(ROWS)
    assert not shop.with_name("shop.tuning.json").exists()  # tuning in memory writes nothing beside the catalog
    folder = gate.save(tmp_path / "saved")
    manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    assert manifest["catalog"] == "shop" and manifest["tuning_status"] == "tuned"
    assert set(manifest["files"]) == {path.name for path in folder.iterdir()} - {MANIFEST}
    loaded = Gate.load(folder, use_embedder)
    assert not loaded.rebuilt_ and loaded.tuning_version_ == gate.tuning_version_
    assert loaded.catalog_.intent_names() == gate.catalog_.intent_names() and loaded.catalog_path_ is None
    probe = [text for texts in IN_SCOPE.values() for text in texts[:4]] + OFF_TOPIC[:8]
    assert loaded.decide_many(probe) == gate.decide_many(probe)


def test_saving_again_replaces_the_folder_whole(plumbing_gate, tmp_path):
    folder = plumbing_gate.save(tmp_path / "saved")
    (folder / "stray.txt").write_text("left from before")
    plumbing_gate.save(folder)
    assert not (folder / "stray.txt").exists()
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".")] == []  # no staging left behind


def test_loading_something_else_says_what_it_is_and_the_fix(plumbing_gate, tmp_path):
    with pytest.raises(UserError, match=r"not a saved gate \(no gate.json\).*Gate\(\)\.fit\(path\)"):
        Gate.load(tmp_path)
    folder = plumbing_gate.save(tmp_path / "saved")
    manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    (folder / MANIFEST).write_text(json.dumps({**manifest, "model": "another-model"}), encoding="utf-8")
    with pytest.raises(UserError, match="saved with model another-model"):
        Gate.load(folder, plumbing_gate.embedder_)
    (folder / MANIFEST).write_text(json.dumps({**manifest, "format_version": 99}), encoding="utf-8")
    with pytest.raises(UserError, match="not a gate this version can read"):
        Gate.load(folder, plumbing_gate.embedder_)


def test_a_failed_save_leaves_the_previous_gate_in_place(plumbing_gate, tmp_path, monkeypatch):
    folder = plumbing_gate.save(tmp_path / "saved")
    before = {path.name: path.read_bytes() for path in folder.iterdir()}

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("gatekeeper.gate.save_artifacts", disk_full)  # the disk fills up halfway through
    with pytest.raises(UserError, match="cannot save the gate there.*No space left"):
        plumbing_gate.save(folder)
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["saved", "shop.yaml"]  # no staging left behind


def test_the_readme_example_runs_as_written(tmp_path, monkeypatch):
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## In Python: the `Gate` API"):]
    code = section[section.index("```python\n") + len("```python\n"):section.index("\n```\n")]
    code = code.replace('"/tmp/telecom-gate"', repr(str(tmp_path / "telecom-gate")))
    monkeypatch.chdir(Path(__file__).resolve().parent.parent)
    printed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert printed.returncode == 0, printed.stderr
    comments = [line.split("# ", 1)[1].split("  (")[0] for line in code.splitlines() if "print(" in line]
    assert [line.strip() for line in printed.stdout.splitlines()] == comments  # each print shows what its comment says
