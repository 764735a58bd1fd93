"""Manifest text → plain data, with every cost bounded and every error safe to show.

The text comes from users, so loading is defensive in this order:

1. **Size** — at most :data:`MAX_MANIFEST_BYTES` (UTF-8) before any parser sees it.
2. **Characters** — valid UTF-8 of printable characters (tab, LF, CR and the YAML printable set;
   NUL, form feed, DEL, U+FFFE, lone surrogates… are refused) with the line and column of the
   first offender. The same rule for JSON and YAML, so both loaders agree.
3. **Parsing** — JSON (the text starts with ``{``) through :mod:`json` with a hook that counts
   objects and records duplicate keys; YAML through libyaml's C parser when PyYAML was built with
   it (``yaml.__with_libyaml__``), otherwise the pure-Python one, under a *Python* composer that
   counts nodes, aliases and depth as it builds the tree, so a hostile document stops after at
   most :data:`MAX_VALUES` nodes — that budget is what bounds the CPU of one request
   (``benchmarks/manifest_dos.py``). Construction is libyaml-independent: a ``SafeConstructor``
   (plain data only) whose failures — ``!!int 'x'``, ``!!timestamp 'x'``, a 1 000-part
   sexagesimal number — all become one positioned error, never a stray exception.
4. **Shape** — one walk over the loaded value (aliases expanded) bounding depth and the number of
   values, refusing strings that cannot be stored or encoded (NUL, lone surrogates: a JSON
   ``"\\ud800"`` escape) and duplicate keys, each named by its field path.

Errors never quote document content. Parser errors carry a position and the parser's problem with
any quoted fragment of the document removed (token names such as ``'<stream end>'`` and bare
punctuation stay). Walk errors name a field path, but the values of ``env``, ``secrets`` and
``bindings`` maps are opaque: a path ends at ``….env.<NAME>`` and nothing inside such a value is
ever named or quoted. The validator (:mod:`admin.manifest`) keeps the same rule; together they make
"no secret in a 422" a property of loading and validation rather than a special case.

Both loaders may word a syntax error differently and point at a neighbouring column (libyaml
reports where it gave up, PyYAML where the token started); both always give ``line L, column C``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Generator, Hashable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final

import yaml
from yaml.composer import Composer, ComposerError
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode
from yaml.resolver import Resolver

# Issue and key_text are the validation vocabulary's (routing.validation); re-exported here.
from routing.errors import InvalidFields
from routing.errors import Issue as Issue
from routing.validation import field_path, index_path
from routing.validation import key_text as key_text

log = logging.getLogger("turnout.admin.manifest")

MAX_MANIFEST_BYTES: Final = 1024 * 1024
MAX_DEPTH: Final = 32
MAX_ALIASES: Final = 16
# Nodes while composing and values after loading (aliases expanded). It bounds the CPU one
# manifest costs: ~3-4 µs per node with libyaml, so ~30 ms at the cap (benchmarks/RESULTS.md).
MAX_VALUES: Final = 5_000
MAX_NUMBER_LEN: Final = 32  # longer plain scalars are strings; a longer !!int/!!float is refused
MAX_ISSUES: Final = 50
OPAQUE_MAPS: Final = frozenset({"env", "secrets", "bindings"})  # their values are never shown
LIBYAML: Final[bool] = bool(getattr(yaml, "__with_libyaml__", False))

# YAML 1.1's printable set (also libyaml's): the reader refuses anything else, and so do we,
# for JSON too, before a parser runs.
_NOT_PRINTABLE = re.compile("[^\t\n\r\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
# Strings no column can hold (PostgreSQL text refuses NUL; UTF-8 cannot encode a lone surrogate).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
# A quoted fragment of a parser message: a token name ('<stream end>') or punctuation (',' ']')
# is parser vocabulary and stays; anything else may be document content and goes.
_QUOTED = re.compile(r"""\s*('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")""")
_VOCABULARY = re.compile(r"""['"](?:<[a-z ]+>|[^\w\s'"\\]{1,3})['"]""")
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_STR_TAG: Final = "tag:yaml.org,2002:str"
_MERGE_TAG: Final = "tag:yaml.org,2002:merge"


class ManifestError(InvalidFields):
    """The manifest is invalid; ``issues`` lists every ``(path, message)`` found (→ 422)."""

    def __init__(self, issues: Iterable[tuple[str, str]]) -> None:
        super().__init__(issues, "invalid manifest")


def _fail(message: str) -> ManifestError:
    return ManifestError([Issue("$", message)])


# --------------------------------------------------------------------------------- text


def _where(text: str, index: int) -> str:
    line = text.count("\n", 0, index) + 1
    column = index - (text.rfind("\n", 0, index) + 1) + 1
    return f"line {line}, column {column}"


def _decode(data: str | bytes) -> str:
    if isinstance(data, bytes):
        if len(data) > MAX_MANIFEST_BYTES:
            raise _fail(f"manifest exceeds {MAX_MANIFEST_BYTES} bytes")
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            prefix = data[: exc.start].decode("utf-8-sig", "replace")
            raise _fail(f"manifest is not valid UTF-8 ({_where(prefix, len(prefix))})") from None
    else:
        text = data
        if len(text) > MAX_MANIFEST_BYTES or (
            len(text.encode("utf-8", "replace")) > MAX_MANIFEST_BYTES
        ):
            raise _fail(f"manifest exceeds {MAX_MANIFEST_BYTES} bytes")
    text = text.removeprefix("\ufeff")
    bad = _NOT_PRINTABLE.search(text)
    if bad is not None:
        raise _fail(
            f"character U+{ord(bad.group()):04X} is not allowed in a manifest "
            f"({_where(text, bad.start())}); write it as an escape inside a quoted string"
        )
    return text


def load_document(data: str | bytes, *, libyaml: bool = LIBYAML) -> Any:
    """Size- and character-check, parse JSON or YAML (safely), walk the result; plain data.

    Raises :class:`ManifestError` (issues at ``$`` with a position for text and syntax problems,
    at field paths for values and keys). ``libyaml=False`` forces the pure-Python YAML parser
    (tests run both)."""
    text = _decode(data)
    if not text.strip():
        raise _fail("manifest is empty")
    duplicates: dict[int, list[Hashable]] = {}
    doc: Any
    if text.lstrip().startswith("{"):
        try:
            doc = _load_json(text, duplicates)
        except RecursionError:
            raise _fail(f"nested deeper than {MAX_DEPTH}") from None
        except ValueError as exc:
            # A flow-style YAML mapping also starts with "{": give YAML a chance, but report
            # the JSON error if both fail (the author most likely meant JSON).
            duplicates.clear()
            try:
                doc = _load_yaml(text, duplicates, libyaml)
            except ManifestError:
                raise _fail(f"invalid JSON: {exc}") from None
    else:
        doc = _load_yaml(text, duplicates, libyaml)
    check_shape(doc, duplicates)
    return doc


# --------------------------------------------------------------------------------- JSON


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _json_values_bound(text: str) -> int:
    """An upper bound on the values a JSON text holds: every value but the last in a container
    is followed by a comma, and every container opens with a bracket. Commas inside strings
    only count when the cheap bound is already over budget (then strings are cut out first)."""
    bound = text.count(",") + text.count("[") + text.count("{") + 1
    if bound > MAX_VALUES:
        rest = _JSON_STRING.sub("", text)
        bound = rest.count(",") + rest.count("[") + rest.count("{") + 1
    return bound


def _load_json(text: str, duplicates: dict[int, list[Hashable]]) -> Any:
    # json's C scanner builds the whole document before any hook could count it.
    if _json_values_bound(text) > MAX_VALUES:
        raise _fail(f"manifest holds more than {MAX_VALUES} values")

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(items)
        if len(obj) != len(items):
            seen: set[str] = set()
            dup: dict[Hashable, None] = {}
            for key, _ in items:
                if key in seen:
                    dup[key] = None
                seen.add(key)
            duplicates[id(obj)] = list(dup)
        return obj

    return json.loads(text, object_pairs_hook=pairs, parse_constant=_reject_constant)


# --------------------------------------------------------------------------------- YAML


class _BudgetError(ComposerError):
    """A budget ran out (values, aliases, depth): about the document, not one field."""


class _Bounded(Composer, SafeConstructor, Resolver):
    """The Python composer with budgets, and a constructor that fails only with positions.

    Mixed in front of libyaml's parser (``CSafeLoader``) or PyYAML's pure one (``SafeLoader``):
    either way events are turned into nodes here, one at a time, so the budgets hold before the
    tree exists; the C composer would build all of it first."""

    duplicates: dict[int, list[Hashable]]

    if TYPE_CHECKING:  # the parser half (libyaml's or PyYAML's) comes with the concrete loader

        def check_event(self, *choices: Any) -> bool: ...
        def peek_event(self) -> Any: ...

    def _init_budgets(self, duplicates: dict[int, list[Hashable]]) -> None:
        self._depth = 0
        self._aliases = 0
        self._nodes = 0
        self.duplicates = duplicates

    def _refuse(self, problem: str) -> _BudgetError:
        return _BudgetError(None, None, problem, self.peek_event().start_mark)

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        try:
            if self.check_event(AliasEvent):
                self._aliases += 1
                if self._aliases > MAX_ALIASES:
                    raise self._refuse(f"more than {MAX_ALIASES} aliases")
                return super().compose_node(parent, index)
            self._nodes += 1
            if self._nodes > MAX_VALUES:
                raise self._refuse(f"more than {MAX_VALUES} values")
            self._depth += 1
            try:
                if self._depth > MAX_DEPTH:
                    raise self._refuse(f"nested deeper than {MAX_DEPTH}")
                return super().compose_node(parent, index)
            finally:
                self._depth -= 1
        except yaml.MarkedYAMLError as exc:
            # On its way out the error collects where it happened: the composer's stack is
            # the field path (a key node per mapping level, an index per sequence level).
            if not isinstance(exc, _BudgetError):
                trail: list[Any] = exc.__dict__.setdefault("trail", [])
                trail.append(index)
            raise

    def resolve(self, kind: type[Node], value: Any, implicit: Any) -> str:
        # Only numbers could match a long plain scalar; skip the regexes (and the int()).
        if kind is ScalarNode and implicit[0] and len(value) > MAX_NUMBER_LEN:
            return _STR_TAG
        tag: str = super().resolve(kind, value, implicit)  # type: ignore[no-untyped-call]
        return tag

    def construct_yaml_map(self, node: MappingNode) -> Generator[dict[Any, Any]]:
        data: dict[Any, Any] = {}
        yield data
        dup = self._duplicate_keys(node)
        data.update(self.construct_mapping(node))
        if dup:
            self.duplicates[id(data)] = dup

    def _duplicate_keys(self, node: MappingNode) -> list[Hashable]:
        # Explicit keys only (before merge keys are flattened in): an explicit key may override
        # a merged one on purpose.
        seen: set[object] = set()
        dup: list[Hashable] = []
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                if key in seen and key not in dup:
                    dup.append(key)
                seen.add(key)
            except TypeError:
                continue  # unhashable key: construct_mapping reports it with its position
        return dup

    def construct_checked(self, node: ScalarNode) -> Any:
        """A scalar with a type-checked tag (``!!int``, ``!!timestamp``, …, explicit or resolved):
        length-capped numbers, and any failure as a positioned error without the value."""
        tag = node.tag.removeprefix("tag:yaml.org,2002:")
        value = node.value
        if tag in ("int", "float") and isinstance(value, str) and len(value) > MAX_NUMBER_LEN:
            raise ConstructorError(
                None, None, f"a number longer than {MAX_NUMBER_LEN} characters", node.start_mark
            )
        try:
            return _SCALARS[tag](self, node)
        except yaml.YAMLError:
            raise
        except Exception as exc:  # ValueError, KeyError, OverflowError, AttributeError...
            log.debug("manifest value not constructible as %s: %s", tag, type(exc).__name__)
            raise ConstructorError(
                None, None, f"this value cannot be read as !!{tag}", node.start_mark
            ) from None


# The scalar constructors that can fail on a value (the rest cannot, or raise positioned errors).
_SCALARS: Final[dict[str, Any]] = {
    "int": SafeConstructor.construct_yaml_int,
    "float": SafeConstructor.construct_yaml_float,
    "bool": SafeConstructor.construct_yaml_bool,
    "timestamp": SafeConstructor.construct_yaml_timestamp,
    "binary": SafeConstructor.construct_yaml_binary,
}


class _PureLoader(_Bounded, yaml.SafeLoader):
    def __init__(self, stream: str, duplicates: dict[int, list[Hashable]]) -> None:
        yaml.SafeLoader.__init__(self, stream)
        self._init_budgets(duplicates)


def _register(loader: type[_PureLoader] | type[yaml.CSafeLoader]) -> None:
    # (the stubs' type variable does not know loaders built from mixins)
    loader.add_constructor("tag:yaml.org,2002:map", _Bounded.construct_yaml_map)  # type: ignore[type-var]
    for tag in _SCALARS:
        loader.add_constructor(f"tag:yaml.org,2002:{tag}", _Bounded.construct_checked)  # type: ignore[type-var]


_register(_PureLoader)
_LOADERS: dict[bool, Any] = {False: _PureLoader}

if LIBYAML:

    class _CLoader(_Bounded, yaml.CSafeLoader):
        def __init__(self, stream: str, duplicates: dict[int, list[Hashable]]) -> None:
            yaml.CSafeLoader.__init__(self, stream)
            Composer.__init__(self)
            self._init_budgets(duplicates)

    _register(_CLoader)
    _LOADERS[True] = _CLoader


def _problem(text: str) -> str:
    """A parser problem without document content (see the module docstring)."""

    def keep(match: re.Match[str]) -> str:
        return match.group() if _VOCABULARY.fullmatch(match.group(1)) else ""

    return " ".join(_QUOTED.sub(keep, text).split())


def _load_yaml(text: str, duplicates: dict[int, list[Hashable]], libyaml: bool) -> Any:
    if libyaml and not LIBYAML:
        raise RuntimeError("PyYAML was built without libyaml")
    parser = _LOADERS[libyaml](text, duplicates)
    root: Node | None = None
    try:
        root = parser.get_single_node()
        return None if root is None else parser.construct_document(root)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = _problem(exc.problem or exc.context or "") or "syntax error"
        if "maximum nesting depth" in problem:  # libyaml's own limit (1000) hit while scanning
            raise _fail(f"nested deeper than {MAX_DEPTH}{where}") from None
        path = "$"
        if "trail" in exc.__dict__:  # while composing: the stack it unwound
            path = join_path([_segment(i) for i in reversed(exc.__dict__["trail"])])
        elif root is not None and mark is not None:  # while constructing: the node it names
            path = _node_path(root, mark)
        raise ManifestError([Issue(path, f"invalid YAML: {problem}{where}")]) from None
    except RecursionError:
        raise _fail(f"nested deeper than {MAX_DEPTH}") from None
    except ManifestError:
        raise
    except Exception as exc:  # a reader or emitter error without a mark; never its text
        log.debug("manifest not loadable: %s", type(exc).__name__)
        raise _fail("invalid YAML: the document cannot be read") from None
    finally:
        parser.dispose()


def _segment(index: Any) -> object:
    """A path segment from the composer's ``index``: a key node, a list index, or None."""
    if isinstance(index, ScalarNode):
        return str(index.value)
    return index if isinstance(index, int) else None


def _node_path(root: Node, mark: Any) -> str:
    """The field path of the node whose start mark is ``mark`` ("$" if none is)."""
    stack: list[tuple[Node, list[object]]] = [(root, [])]
    seen: set[int] = set()
    while stack:
        node, segments = stack.pop()
        if node.start_mark is mark:
            return join_path(segments)
        if id(node) in seen:  # aliases share nodes (and may recurse)
            continue
        seen.add(id(node))
        if isinstance(node, MappingNode):
            for key, value in node.value:
                seg = str(key.value) if isinstance(key, ScalarNode) else None
                stack += [(key, segments), (value, [*segments, seg])]
        elif isinstance(node.value, list):
            stack += [(child, [*segments, i]) for i, child in enumerate(node.value)]
    return "$"


# --------------------------------------------------------------------------------- paths


def join_path(segments: Iterable[object]) -> str:
    """Segments (keys, list indexes, None for "here") as a field path, opaque rule applied:
    after an ``env``/``secrets``/``bindings`` key only the entry's name is shown, never what
    is inside its value (the path stops at ``….secrets.<NAME>``)."""
    path = ""
    opaque = -1  # segments left to show once an opaque map was entered
    for seg in segments:
        if seg is None:
            continue
        if opaque == 0:
            break
        path = index_path(path, seg) if isinstance(seg, int) else field_path(path, seg)
        if opaque > 0:
            opaque -= 1
        elif isinstance(seg, str) and seg in OPAQUE_MAPS:
            opaque = 1
    return path or "$"


# --------------------------------------------------------------------------------- shape


def check_shape(doc: Any, duplicates: Mapping[int, list[Hashable]] | None = None) -> None:
    """Walk the loaded value once: depth and value budgets (aliases expanded), then unstorable
    strings and duplicate keys (named by path; see :func:`_value_issues`)."""
    duplicates = duplicates or {}
    stack: list[tuple[Any, int]] = [(doc, 1)]
    count = 0
    flagged = False
    while stack:
        value, depth = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise _fail(f"manifest holds more than {MAX_VALUES} values")
        if depth > MAX_DEPTH:
            raise _fail(f"nested deeper than {MAX_DEPTH}")
        if isinstance(value, str):
            flagged = flagged or _UNSTORABLE.search(value) is not None
        elif isinstance(value, dict):
            flagged = flagged or id(value) in duplicates
            for key, child in value.items():
                if isinstance(key, str) and _UNSTORABLE.search(key):
                    flagged = True
                stack.append((child, depth + 1))
        elif isinstance(value, list):
            stack.extend((child, depth + 1) for child in value)
    if flagged:
        raise ManifestError(_value_issues(doc, duplicates))


def _unstorable(text: str) -> str:
    char = ord(_UNSTORABLE.search(text).group())  # type: ignore[union-attr]
    if char == 0:
        return "contains U+0000 (NUL), which cannot be stored"
    return f"contains a lone surrogate (U+{char:04X}), which is not valid Unicode"


def _value_issues(doc: Any, duplicates: Mapping[int, list[Hashable]]) -> list[Issue]:
    """Issues for unstorable strings and duplicate keys, by path (the rare, slow pass)."""
    found: dict[Issue, None] = {}
    stack: list[tuple[Any, tuple[object, ...]]] = [(doc, ())]
    while stack and len(found) < MAX_ISSUES:
        value, segments = stack.pop()
        if isinstance(value, str):
            if _UNSTORABLE.search(value):
                found.setdefault(Issue(join_path(segments), _unstorable(value)), None)
        elif isinstance(value, dict):
            for key in duplicates.get(id(value), ()):
                found.setdefault(Issue(join_path((*segments, key)), "duplicate key"), None)
            for key, child in reversed(value.items()):
                if isinstance(key, str) and _UNSTORABLE.search(key):
                    issue = Issue(join_path((*segments, key)), "key " + _unstorable(key))
                    found.setdefault(issue, None)
                stack.append((child, (*segments, key)))
        elif isinstance(value, list):
            stack.extend((value[i], (*segments, i)) for i in reversed(range(len(value))))
    return list(found) or [Issue("$", "invalid manifest")]
