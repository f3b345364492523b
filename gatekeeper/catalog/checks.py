"""Checks of a catalog that its schema cannot express: IME punctuation, duplicates, degenerate shapes.

A catalog that validates can still make a gate that does not work: the same
text under two intents, one intent and nothing to contrast it with, intents
with one example. Each check gives a :data:`Finding` with file, line, field,
message (what is wrong and the fix) and a severity: ``error`` stops the load,
``warning`` is shown by ``gatekeeper build`` and logged by the sidecar.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any, Callable, Iterator

from gatekeeper.catalog.schema import CatalogFile, Defaults, Intent, ModelSettings, ScorerSettings

#: (file, line, field, message, severity) with severity ``error`` or ``warning``.
Finding = tuple[str, int, str, str, str]
#: Line of the YAML node at a location such as ("intents", 0, "examples", 3).
LineOf = Callable[[tuple[Any, ...]], int]

#: Fewer examples than this per intent gets a warning (10-20 is what works well).
MIN_EXAMPLES = 3

_KEYS = {*CatalogFile.model_fields, *Intent.model_fields, *Defaults.model_fields, *ModelSettings.model_fields,
         *ScorerSettings.model_fields}
_FULL_WIDTH_COLON = re.compile(r"^\s*(?:-\s*)?([A-Za-z_]+)\s*：")
_SPACES = re.compile(r"\s+")


def text_key(text: str) -> str:
    """What makes two catalog texts the same: NFKC, white space collapsed, case folded."""
    return _SPACES.sub(" ", unicodedata.normalize("NFKC", text)).strip().casefold()


def ime_punctuation_problems(text: str) -> list[tuple[int, str]]:
    """(line, message) for each line where a Chinese input method's punctuation breaks the YAML.

    A full-width colon after a key (``name：退货``) makes the line plain text
    instead of a key; a full-width space (U+3000) in the indentation is not
    indentation to YAML; a full-width dash is not a list marker.
    """
    problems = []
    for number, line in enumerate(text.splitlines(), 1):
        colon = _FULL_WIDTH_COLON.match(line)
        if colon and colon.group(1) in _KEYS:
            problems.append((number, f"full-width colon '：' after '{colon.group(1)}'; YAML needs the ASCII colon "
                                     "':' followed by a space (switch the input method to half-width punctuation)"))
        elif line[:len(line) - len(line.lstrip())].count("\u3000"):
            problems.append((number, "full-width space (U+3000) in the indentation; indent with ordinary spaces"))
        elif line.lstrip().startswith(("－ ", "— ")):
            problems.append((number, f"'{line.lstrip()[0]}' is not a YAML list marker; start list items with "
                                     "the ASCII '- '"))
    return problems


def check_catalog(files: list[tuple[str, CatalogFile, LineOf]], pack_negatives: bool) -> list[Finding]:
    """Every finding about the merged catalog made of ``files`` (each with its line lookup).

    ``pack_negatives``: the built-in out-of-scope pack will be added, so a
    catalog without its own ``out_of_scope`` still has negatives.
    """
    findings = list(_duplicates(files))
    intents = [(file, index, intent, line_of) for file, part, line_of in files
               for index, intent in enumerate(part.intents)]
    has_negatives = pack_negatives or any(part.out_of_scope for _, part, _ in files)
    first_file, _, first_line_of = files[0]
    if not intents:
        findings.append((first_file, first_line_of(("intents",)), "intents",
                         "the catalog has no intents; add an 'intents:' list with at least one intent (a name and "
                         "10-20 example messages)", "error"))
        return findings
    if len(intents) == 1 and not has_negatives:
        file, index, intent, line_of = intents[0]
        findings.append((file, line_of(("intents", index, "name")), f"intents[{index}] ({intent.name})",
                         "a single intent with no out-of-scope examples gives the gate nothing to reject; add an "
                         "'out_of_scope:' list or keep 'out_of_scope_pack: default'", "error"))
    elif not has_negatives:
        findings.append((first_file, first_line_of(("out_of_scope_pack",)), "out_of_scope",
                         "no out-of-scope examples and 'out_of_scope_pack: none': the threshold can only be set "
                         "from the intents' own examples; add an 'out_of_scope:' list or use the built-in pack",
                         "warning"))
    findings.extend(_thin_intents(intents))
    return findings


def _thin_intents(intents: list[tuple[str, int, Intent, LineOf]]) -> Iterator[Finding]:
    """Warnings for intents with no examples (zero-shot) or fewer than :data:`MIN_EXAMPLES`."""
    for file, index, intent, line_of in intents:
        where = (file, line_of(("intents", index, "name")), f"intents[{index}] ({intent.name})")
        if not intent.examples:
            yield (*where, "no examples: it is matched by its description alone (zero-shot), which misses "
                           "many phrasings; add 10-20 example messages", "warning")
        elif len(intent.examples) < MIN_EXAMPLES:
            yield (*where, f"only {len(intent.examples)} example(s); write at least {MIN_EXAMPLES} (10-20 works "
                           "well) so the gate learns how users phrase it", "warning")


def _duplicates(files: list[tuple[str, CatalogFile, LineOf]]) -> Iterator[Finding]:
    """The same text twice: an error across intents or between an intent and out_of_scope, else a warning."""
    seen: dict[str, tuple[str, str, int]] = {}  # text key -> (owner, file, line); owner: intent name or ''
    for file, part, line_of in files:
        entries = [(intent.name, ("intents", i, "examples", j), f"intents[{i}].examples[{j}]", text)
                   for i, intent in enumerate(part.intents) for j, text in enumerate(intent.examples)]
        entries += [("", ("out_of_scope", j), f"out_of_scope[{j}]", text) for j, text in enumerate(part.out_of_scope)]
        for owner, loc, field, text in entries:
            key, line = text_key(text), line_of(loc)
            if key not in seen:
                seen[key] = (owner, file, line)
                continue
            first_owner, first_file, first_line = seen[key]
            first = f"{first_file}:{first_line}"
            if first_owner == owner:
                yield (file, line, field, f"'{text}' is listed twice (first at {first}); delete one", "warning")
            elif first_owner and owner:
                yield (file, line, field, f"'{text}' is also an example of intent '{first_owner}' ({first}); a "
                                          "message can belong to one intent only: keep it under one", "error")
            else:
                intent = first_owner or owner
                yield (file, line, field, f"'{text}' is both an example of intent '{intent}' and out of scope "
                                          f"(other at {first}); delete it from one of them", "error")
