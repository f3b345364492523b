"""``gatekeeper review``: a local page to label logged traffic, most useful messages first.

* :mod:`gatekeeper.review.ordering`: read a decision log (or any JSONL of
  messages), decide the rows the gate has not decided, order them by what is
  most worth a label.
* :mod:`gatekeeper.review.labels`: the label file (JSON lines that ``tune`` and
  ``eval`` read), saved at once, and its CSV export and import.
* :mod:`gatekeeper.review.app`: the FastAPI app behind ``static/index.html``.
"""
