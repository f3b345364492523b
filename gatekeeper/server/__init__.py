"""The HTTP sidecar: ``gatekeeper serve`` (FastAPI + uvicorn).

Modules, one job each: :mod:`.config` (settings), :mod:`.metrics` (Prometheus),
:mod:`.batching` (fair, bounded micro-batched encoder calls), :mod:`.http_protocol`
(uvicorn's protocol with a header deadline), :mod:`.upstream` (forwarding
and error mapping), :mod:`.replies` (canned OpenAI-format replies),
:mod:`.decision_log` (sampled, rotated JSONL), :mod:`.request_id` (``x-request-id``), :mod:`.state` (the live gate and
reloads), :mod:`.middleware` (bounded body reading, request metrics), :mod:`.schemas`
(typed request/response models), :mod:`.service` (deciding requests: mode,
failure policy, metrics, decision log), :mod:`.app` (the app factory) and
:mod:`.serve_cmd` (the CLI subcommand).
"""
