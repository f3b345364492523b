"""The HTTP sidecar: ``gatekeeper serve`` (FastAPI + uvicorn).

Modules, one job each: :mod:`.config` (settings), :mod:`.metrics` (Prometheus),
:mod:`.batching` (micro-batched encoder calls), :mod:`.upstream` (forwarding
and error mapping), :mod:`.replies` (canned OpenAI-format replies),
:mod:`.decision_log` (sampled, rotated JSONL), :mod:`.request_id` (``x-request-id``), :mod:`.state` (the live gate and
reloads), :mod:`.middleware` (body limit, request metrics), :mod:`.schemas`
(typed request/response models), :mod:`.service` (deciding requests: mode,
failure policy, metrics, decision log), :mod:`.app` (the app factory) and
:mod:`.serve_cmd` (the CLI subcommand).
"""
