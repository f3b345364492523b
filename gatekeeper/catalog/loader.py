"""Load an intent catalog (one YAML file or a directory of them) into a :class:`Catalog`.

Every problem is reported as a :class:`CatalogProblem` naming the file, the line,
the field, what is wrong and how to fix it; all problems of a load are collected
into one :class:`CatalogError` so a user can fix them in one pass.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Iterable

import yaml
from pydantic import BaseModel, ValidationError

from gatekeeper import environment
from gatekeeper.catalog.checks import check_catalog, ime_punctuation_problems, text_key
from gatekeeper.catalog.schema import (Catalog, CatalogFile, Defaults, Intent, ModelSettings, ScorerSettings,
                                       intent_key)
from gatekeeper.errors import CatalogError, CatalogProblem

CATALOG_SUFFIXES = (".yaml", ".yml")
DEFAULT_CATALOG = "intents"
#: The built-in packs shipped inside the package.
PACKS = Path(__file__).parent / "packs"
CONVERSATION_PACK = PACKS / "conversation.yaml"
#: libyaml's parser when PyYAML has it (about 7x faster on a 15k-example catalog: 0.07 s instead of 0.5 s, so a
#: reload is not spent parsing), with the same node tree and line numbers; else PyYAML's own.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def default_catalog_path() -> str:
    """The catalog used when ``--catalog`` is not given: ``$GATEKEEPER_CATALOG`` or ``intents/``."""
    return environment.read(environment.CATALOG, DEFAULT_CATALOG)


def catalog_files(path: str | Path) -> list[Path]:
    """The YAML files that make up the catalog at ``path`` (a file, or a directory's ``*.yaml``)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in CATALOG_SUFFIXES and p.is_file())
        if not files:
            raise CatalogError([CatalogProblem(str(path), 0, "", "the directory holds no .yaml catalog files; "
                                               "add one, or point --catalog at a catalog file")])
        return files
    if not path.exists():
        raise CatalogError([CatalogProblem(str(path), 0, "", "no such file or directory; pass --catalog PATH "
                                           f"or set {environment.CATALOG}")])
    return [path]


def load_catalog(path: str | Path) -> Catalog:
    """Load and validate the catalog at ``path``, merging a directory's files in name order.

    Raises :class:`CatalogError` listing every problem found.
    """
    files = catalog_files(path)
    problems: list[CatalogProblem] = []
    parsed: list[tuple[Path, CatalogFile, yaml.Node]] = []
    for file in files:
        try:
            parsed.append(_load_file(file))
        except CatalogError as error:
            problems.extend(error.problems)
    if problems:
        raise CatalogError(problems)
    catalog = _merge(Path(path), parsed)
    if catalog.conversation_pack == "default":
        catalog = _with_conversation_pack(catalog, parsed[0][1].defaults)
    return catalog.model_copy(update={"path": str(path)})


def _load_file(file: Path) -> tuple[Path, CatalogFile, yaml.Node]:
    try:
        text = file.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise CatalogError([CatalogProblem(
            str(file), text_line_of_byte(file.read_bytes(), error.start), "",
            f"the file is not UTF-8 (byte 0x{error.object[error.start]:02x} at offset {error.start}); save it "
            "as UTF-8, e.g. 'iconv -f GB18030 -t UTF-8 old.yaml > new.yaml'")]) from None
    ime = [CatalogProblem(str(file), line, "", message) for line, message in ime_punctuation_problems(text)]
    if ime:
        raise CatalogError(ime)
    loader = _YAML_LOADER(text)
    try:  # one parse: the node tree (for line numbers) and the data built from it
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = mark.line + 1 if mark else 0
        context = ""
        if error.context and error.context_mark and error.context_mark.line + 1 != line:
            context = f" ({error.context} at line {error.context_mark.line + 1})"
        raise CatalogError([CatalogProblem(
            str(file), line, "", f"broken YAML syntax: {error.problem or error}{context}; "
            "check indentation, colons and quotes here and on the lines before")]) from None
    finally:
        loader.dispose()
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise CatalogError([CatalogProblem(str(file), 1, "", "a catalog file must be a mapping with keys "
                                           "such as 'name', 'intents' and 'out_of_scope'")])
    try:
        parsed = CatalogFile.model_validate(data)
    except ValidationError as error:
        problems = [_problem_from_pydantic(file, root, item) for item in error.errors()]
        # A union field (threshold: number or 'auto') fails once per branch: report it once.
        unique = {(problem.line, problem.field): problem for problem in reversed(problems)}
        raise CatalogError(sorted(unique.values(), key=lambda problem: problem.line)) from None
    problems = [
        CatalogProblem(str(file), _line_of(root, ("intents", index)), f"intents[{index}] ({intent.name})",
                       "the intent has no examples and no description; add examples (user messages) "
                       "or at least a description so it can be matched zero-shot")
        for index, intent in enumerate(parsed.intents)
        if not intent.examples and not intent.description.strip()
    ]
    if problems:
        raise CatalogError(problems)
    return file, parsed, root


def _merge(path: Path, parsed: list[tuple[Path, CatalogFile, yaml.Node]]) -> Catalog:
    problems: list[CatalogProblem] = []
    seen: dict[str, tuple[Path, int]] = {}
    intents = []
    for file, part, root in parsed:
        for index, intent in enumerate(part.intents):
            line = _line_of(root, ("intents", index, "name"))
            if intent_key(intent.name) in seen:
                first_file, first_line = seen[intent_key(intent.name)]
                problems.append(CatalogProblem(
                    str(file), line, f"intents[{index}].name",
                    f"duplicate intent '{intent.name}' (first defined at {first_file}:{first_line}); "
                    "rename one of them or merge their examples"))
                continue
            seen[intent_key(intent.name)] = (file, line)
            intents.append(_with_file_defaults(intent, part.defaults))
    model = _single_section(parsed, "model", ModelSettings(), problems)
    scorer = _single_section(parsed, "scorer", ScorerSettings(), problems)
    out_of_scope_pack = _single_section(parsed, "out_of_scope_pack", "default", problems)
    conversation_pack = _single_section(parsed, "conversation_pack", "default", problems)
    defaults = _catalog_defaults(parsed, problems)
    located = [(str(file), part, lambda loc, root=root: _line_of(root, loc)) for file, part, root in parsed]
    findings = check_catalog(located, out_of_scope_pack == "default")
    problems.extend(CatalogProblem(*finding[:4]) for finding in findings if finding[4] == "error")
    if problems:
        raise CatalogError(problems)
    names = {part.name for _, part, _ in parsed if part.name}
    name = names.pop() if len(names) == 1 else (path.stem if path.is_file() else path.resolve().name)
    return Catalog(
        name=name, model=model, scorer=scorer, defaults=defaults, intents=intents,
        out_of_scope=[text for _, part, _ in parsed for text in part.out_of_scope],
        sources=[str(file) for file, _, _ in parsed],
        out_of_scope_pack=out_of_scope_pack, conversation_pack=conversation_pack,
        warnings=[str(CatalogProblem(*finding[:4])) for finding in findings if finding[4] == "warning"],
    )


def _with_conversation_pack(catalog: Catalog, first_defaults: Defaults | None) -> Catalog:
    """``catalog`` plus the built-in conversation intents it does not define itself.

    A catalog intent with the same name (case-insensitive) replaces the pack's;
    pack examples that the catalog already uses (as an example or out of scope)
    are left out, so the catalog's own choice wins.
    """
    _, pack, _ = _load_file(CONVERSATION_PACK)
    own_names = {intent_key(intent.name) for intent in catalog.intents}
    own_texts = {text_key(text) for intent in catalog.intents for text in intent.examples}
    own_texts.update(text_key(text) for text in catalog.out_of_scope)
    added = []
    for intent in pack.intents:
        if intent_key(intent.name) in own_names:
            continue
        examples = [text for text in intent.examples if text_key(text) not in own_texts]
        added.append(_with_file_defaults(intent.model_copy(update={"examples": examples}), first_defaults))
    return catalog.model_copy(update={"intents": [*catalog.intents, *added],
                                      "pack_intents": [intent.name for intent in added]})


def _catalog_defaults(parsed: list[tuple[Path, CatalogFile, yaml.Node]], problems: list[CatalogProblem]) -> Defaults:
    """The defaults of the whole catalog, from its files' ``defaults`` sections.

    ``max_chars`` must agree across the files that set it. Each file's
    numeric threshold is already copied onto its own intents, so the catalog's
    threshold is the one every file has (a file without one has ``auto``),
    else ``auto``; the reject reply is the first file's (replies for messages
    with no nearest intent).
    """
    files = [(file, part.defaults or Defaults(), root) for file, part, root in parsed]
    first = next((part.defaults for _, part, _ in parsed if part.defaults), Defaults())
    setting = [(file, d.max_chars, root) for file, d, root in files if "max_chars" in d.model_fields_set]
    for file, max_chars, root in setting[1:]:
        if max_chars != setting[0][1]:
            problems.append(CatalogProblem(
                str(file), _line_of(root, ("defaults", "max_chars")), "defaults.max_chars",
                f"{max_chars} conflicts with {setting[0][1]} in {setting[0][0]}; messages are cut to one "
                "length for the whole catalog, so set the same value in every file (or in one)"))
    thresholds = {d.threshold for _, d, _ in files}
    return first.model_copy(update={"threshold": thresholds.pop() if len(thresholds) == 1 else "auto",
                                    "max_chars": setting[0][1] if setting else Defaults().max_chars})


def _with_file_defaults(intent: Intent, defaults: Defaults | None) -> Intent:
    """``intent`` with its file's reject reply and numeric threshold filled in where it sets none."""
    if defaults is None:
        return intent
    update: dict[str, Any] = {}
    if intent.reject_reply is None:
        update["reject_reply"] = defaults.reject_reply
    if intent.threshold is None and defaults.threshold != "auto":
        update["threshold"] = defaults.threshold
    return intent.model_copy(update=update) if update else intent


def _single_section(parsed: list[tuple[Path, CatalogFile, yaml.Node]], key: str, fallback: Any,
                    problems: list[CatalogProblem]) -> Any:
    """A section that must be the same for the whole catalog: files may repeat it only if identical."""
    chosen: tuple[Path, Any] | None = None
    for file, part, root in parsed:
        section = getattr(part, key)
        if section is None:
            continue
        if chosen is None:
            chosen = (file, section)
        elif section != chosen[1]:
            problems.append(CatalogProblem(
                str(file), _line_of(root, (key,)), key,
                f"conflicts with the '{key}' section of {chosen[0]}; keep it in one file of the directory "
                "or make them identical"))
    return chosen[1] if chosen else fallback


def _problem_from_pydantic(file: Path, root: yaml.Node, item: dict[str, Any]) -> CatalogProblem:
    loc = tuple(item["loc"])
    field = _field_name(loc)
    kind = item["type"]
    if kind == "extra_forbidden":
        key = str(loc[-1])
        allowed = _allowed_keys(loc[:-1])
        guess = difflib.get_close_matches(key, allowed, n=1)
        hint = f"did you mean '{guess[0]}'?" if guess else f"allowed keys here: {', '.join(allowed)}"
        message = f"unknown key '{key}'; {hint}"
    elif kind == "missing":
        message = "this field is required; add it"
    elif field.startswith("intents") and field.endswith("threshold") and kind in ("float_type", "int_type"):
        message = (f"must be a number between -1 and 1 (got {item.get('input')!r}); "
                   "delete the line to use the file's default threshold, which may be 'auto'")
    elif field.endswith("threshold") and kind in ("float_type", "float_parsing", "int_type", "literal_error"):
        message = f"must be a number between -1 and 1, or 'auto' (got {item.get('input')!r})"
    elif kind == "bool_type":
        message = f"must be true or false (got {item.get('input')!r})"
    elif kind in ("string_type", "str_type"):
        message = f"must be a string, got {type(item.get('input')).__name__} {item.get('input')!r}; quote it"
    elif kind == "value_error":
        message = str(item["msg"]).removeprefix("Value error, ")
    else:
        message = f"{item['msg']} (got {item.get('input')!r})"
    return CatalogProblem(str(file), _line_of(root, loc), field, message)


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    """Field names of the model found at ``loc`` inside a catalog file."""
    model: type[BaseModel] = CatalogFile
    for part in loc:
        if isinstance(part, int):
            continue
        annotation = model.model_fields[part].annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        for candidate in candidates:
            inner = [candidate, *getattr(candidate, "__args__", ())]
            found = [c for c in inner if isinstance(c, type) and issubclass(c, BaseModel)]
            if found:
                model = found[0]
                break
    return list(model.model_fields)


def _field_name(loc: Iterable[Any]) -> str:
    name = ""
    for part in loc:
        if isinstance(part, int):
            name += f"[{part}]"
        elif not str(part).startswith(("function-", "literal[", "union[")) and part not in (
                "float", "int", "str"):
            name += f".{part}" if name else str(part)
    return name


def text_line_of_byte(data: bytes, offset: int) -> int:
    """1-based line of byte ``offset`` in ``data``."""
    return data.count(b"\n", 0, offset) + 1


def _line_of(root: yaml.Node | None, loc: Iterable[Any]) -> int:
    """1-based line of the YAML node at ``loc`` (keys and indexes), or of its nearest parent."""
    node = root
    line = root.start_mark.line + 1 if root is not None else 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = [(k, v) for k, v in node.value if k.value == part]
            if not match:
                break
            key_node, node = match[0]
            line = key_node.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line
