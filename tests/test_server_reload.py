"""POST /admin/reload: token protection, atomic swap to a good catalog, a bad catalog keeps the old one."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import pytest

from gatekeeper.gate import Gate
from tests.server_fixtures import NEW_INTENT, SHOP, chat_body, write_catalog

TOKEN = "test-admin-token"

@pytest.fixture
def shop(tmp_path: Path, use_embedder) -> tuple[Path, Gate]:
    """A copy of the small catalog in a temporary directory, and its gate."""
    path = tmp_path / "shop.yaml"
    write_catalog(path, SHOP)
    return path, Gate(embedder=use_embedder).fit(path)


def reload(sidecar, token: str | None = TOKEN) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return sidecar.client.post("/admin/reload", headers=headers)


def canned_reply(sidecar, text: str = "tell me a joke") -> str:
    response = sidecar.client.post("/v1/chat/completions", json=chat_body(text))
    return response.json()["choices"][0]["message"]["content"]


def test_reload_is_disabled_without_a_token(shop, asgi_sidecar):
    sidecar = asgi_sidecar(shop[1])
    response = reload(sidecar)
    assert response.status_code == 403
    assert "GATEKEEPER_ADMIN_TOKEN" in response.json()["error"]["message"]


@pytest.mark.parametrize("token", [None, "wrong-token", TOKEN + "x"])
def test_reload_needs_the_right_token(shop, asgi_sidecar, token):
    sidecar = asgi_sidecar(shop[1], admin_token=TOKEN)
    response = reload(sidecar, token)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_admin_token"
    assert sidecar.metric("gatekeeper_reloads_total", result="success") == 0


def test_reload_swaps_in_a_changed_catalog_and_reuses_the_embedder(shop, asgi_sidecar):
    path, gate = shop
    sidecar = asgi_sidecar(gate, admin_token=TOKEN)
    assert canned_reply(sidecar) == "Sorry, I only help with orders."
    write_catalog(path, {**SHOP, "intents": [*SHOP["intents"], NEW_INTENT],
                         "defaults": {"reject_reply": {"en": "Orders only, sorry.", "zh": "只处理订单。"}}})
    answers: list[int] = []

    def keep_asking() -> None:  # requests during the rebuild are served by the old gate
        for _ in range(20):
            answers.append(sidecar.client.post("/v1/gate", json={"text": "track my parcel"}).status_code)

    asker = threading.Thread(target=keep_asking)
    asker.start()
    response = reload(sidecar)
    asker.join(30)
    assert response.status_code == 200, response.text
    summary = response.json()
    assert summary["embedder_reused"] is True and summary["rebuilt"] is True and summary["intents"] == 3
    assert answers == [200] * 20
    assert canned_reply(sidecar) == "Orders only, sorry."
    decision = sidecar.client.post("/v1/gate", json={"text": "please change my delivery address"}).json()
    assert decision["intent"] == "delivery_address"
    assert sidecar.client.get("/readyz").json()["fingerprint"] == summary["fingerprint"]
    assert sidecar.metric("gatekeeper_reloads_total", result="success") == 1
    assert sidecar.metric("gatekeeper_catalog_info", catalog="shop", fingerprint=summary["fingerprint"],
                          model=str(sidecar.app.state.gate_state.gate.artifacts_.meta["model"]), intents="3") == 1
    assert sidecar.metric("gatekeeper_catalog_info", catalog="shop", fingerprint=gate.artifacts_.fingerprint,
                          model=str(gate.artifacts_.meta["model"]), intents="2") == 0


@pytest.mark.parametrize(("broken", "expected"), [
    ({**SHOP, "intents": [{**SHOP["intents"][0], "threshold": 5}]}, "threshold"),
    ({**SHOP, "intents": [{"name": "control\u0007character", "examples": ["x"]}]}, "name"),
    ("intents: [unclosed", "YAML"),
])
def test_a_bad_catalog_is_refused_and_the_old_one_keeps_serving(shop, asgi_sidecar, broken, expected):
    path, gate = shop
    sidecar = asgi_sidecar(gate, admin_token=TOKEN)
    if isinstance(broken, str):
        path.write_text(broken, encoding="utf-8")
    else:
        write_catalog(path, broken)
    response = reload(sidecar)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_catalog"
    assert error["problems"] and all(problem.startswith(str(path)) for problem in error["problems"])
    assert any(expected.lower() in problem.lower() for problem in error["problems"]), error["problems"]
    assert canned_reply(sidecar) == "Sorry, I only help with orders."
    assert sidecar.client.get("/readyz").json()["fingerprint"] == gate.artifacts_.fingerprint
    assert sidecar.metric("gatekeeper_reloads_total", result="failure") == 1
    assert sidecar.metric("gatekeeper_reloads_total", result="success") == 0


def test_a_deleted_catalog_is_refused(shop, asgi_sidecar):
    path, gate = shop
    sidecar = asgi_sidecar(gate, admin_token=TOKEN)
    path.unlink()
    response = reload(sidecar)
    assert response.status_code == 422
    assert "no such file" in response.json()["error"]["problems"][0]
    assert sidecar.client.post("/v1/gate", json={"text": "track my parcel"}).status_code == 200
