"""The scope algebra of pods: rules, normalisation, coverage, overlap, multiset denies, decisions.

Pure: no I/O, no clock, no SQL. Everything the authority decides about scopes is decided here.

Model (``shared/spec/pod-scope.md``)
------------------------------------
A :class:`Rule` is ``{target, permission, recursive}``. ``target`` is an absolute, normalised
path (:func:`normalise_path`: no globs, no ``.``/``..`` segments, no control characters);
``permission`` is ``read`` < ``write``; a recursive rule covers its target and everything
below it, a non-recursive one its target and the target's direct children only.

A :class:`Scope` is a list of allow rules and a *multiset* of deny :class:`Layer` s. The access
at a path is the highest matching allow, capped below every matching deny: a write-deny caps at
read, a read-deny removes access. Each deny layer remembers where it came from — an explicit
deny of the pod's base scope, or the write rule of one outstanding delegation edge — so removing
one delegation removes exactly that edge's layers and never an explicit deny, even an identical
one (two identical denies are two layers).

A pod's **effective scope** (:func:`effective`) is its base scope plus one write-deny layer per
write rule of each outstanding edge where it is the parent. Read stays with the parent.

Why finite checks are exact
---------------------------
"Does scope S give at least ``write`` everywhere in rule r's region?" and "do the write regions
of two scopes meet?" range over infinitely many paths. They are decided on a finite set of
:func:`representatives`: whether a rule matches a path depends only on how the path sits
relative to the rule's target, so for any path ``p`` let ``d`` be its deepest ancestor-or-self
that is the target of some rule involved. Every rule then matches ``p`` exactly as it matches
one of ``d``, ``d/<fresh>`` (a direct child of ``d`` no rule names) or ``d/<fresh>/<fresh>``
(anything deeper): a recursive rule matches iff its target is an ancestor-or-self of ``d``; a
non-recursive one iff its target is ``p`` (then ``p`` is ``d``) or ``p``'s parent (then that
parent is ``d`` or ``d``'s parent). Paths with no such ``d`` match no rule at all. So checking
those three points for every target is the same as checking every path. ``<fresh>`` is
:data:`FRESH`, a segment no valid path can contain; messages render it as ``<any>``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

MAX_TARGET_BYTES: Final = 1024  # UTF-8; keeps (space_id, target) inside a PostgreSQL btree row
MAX_RULES: Final = 64
FRESH: Final = "\x00"  # a path segment no normalised path contains (control characters are refused)
_GLOB_CHARS: Final = frozenset("*?[]{}")


class ScopeError(ValueError):
    """A rule or path failed validation; ``path`` names the field (relative: ``target``)."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}" if path else reason)


class Perm(enum.IntEnum):
    """Access levels, ordered: ``NONE < READ < WRITE``."""

    NONE = 0
    READ = 1
    WRITE = 2

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, value: object) -> Perm:
        if value == "read":
            return cls.READ
        if value == "write":
            return cls.WRITE
        raise ScopeError("permission", "must be 'read' or 'write'")


# ------------------------------------------------------------------------------ paths


def normalise_path(text: object) -> str:
    """The normalised form of an absolute path, or :class:`ScopeError` saying what is wrong.

    Repeated slashes collapse and a trailing slash is dropped (``/src//core/`` → ``/src/core``);
    relative paths, ``.`` and ``..`` segments, glob characters (``* ? [ ] { }``), control
    characters and paths over :data:`MAX_TARGET_BYTES` bytes are refused rather than guessed at.
    """
    if not isinstance(text, str):
        raise ScopeError("", "must be a string")
    if not text.startswith("/"):
        raise ScopeError("", "must be an absolute path starting with '/'")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise ScopeError("", "must not contain control characters")
    glob = sorted(_GLOB_CHARS.intersection(text))
    if glob:
        raise ScopeError("", f"globs are not supported (found {' '.join(glob)}): name a path")
    parts = [p for p in text.split("/") if p]
    for part in parts:
        if part in (".", ".."):
            raise ScopeError("", f"'{part}' segments are not allowed: give the normalised path")
    path = "/" + "/".join(parts)
    if len(path.encode("utf-8")) > MAX_TARGET_BYTES:
        raise ScopeError("", f"longer than {MAX_TARGET_BYTES} bytes")
    return path


def parent_of(path: str) -> str | None:
    """``/a/b`` → ``/a``, ``/a`` → ``/``, ``/`` → None."""
    if path == "/":
        return None
    head = path.rsplit("/", 1)[0]
    return head or "/"


def child_of(path: str, segment: str) -> str:
    return f"/{segment}" if path == "/" else f"{path}/{segment}"


def is_within(path: str, ancestor: str) -> bool:
    """``path`` is ``ancestor`` or below it."""
    if ancestor == "/":
        return True
    return path == ancestor or path.startswith(ancestor + "/")


def ancestors_or_self(path: str) -> list[str]:
    """``/a/b`` → ``["/", "/a", "/a/b"]``."""
    out = ["/"]
    if path != "/":
        acc = ""
        for part in path[1:].split("/"):
            acc += "/" + part
            out.append(acc)
    return out


def render_path(path: str) -> str:
    """A representative path for a message (a fresh segment reads ``<any>``)."""
    return path.replace(FRESH, "<any>")


# ------------------------------------------------------------------------------ rules


@dataclass(frozen=True, slots=True, order=True)
class Rule:
    target: str
    permission: Perm
    recursive: bool = True

    def covers(self, path: str) -> bool:
        """Does this rule's region contain ``path``?"""
        t = self.target
        if path == t:
            return True
        prefix = "/" if t == "/" else t + "/"
        if not path.startswith(prefix):
            return False
        return self.recursive or "/" not in path[len(prefix) :]

    def overlaps(self, other: Rule) -> bool:
        """Do the regions of the two rules share a path (permissions aside)?"""
        a, b = self, other
        if a.recursive and b.recursive:
            return is_within(a.target, b.target) or is_within(b.target, a.target)
        # One of them is non-recursive: its region is its target plus the direct children,
        # so a shared path, if any, is one of the two targets or a child of the shallower one.
        return any(
            a.covers(p) and b.covers(p)
            for p in (a.target, b.target, child_of(a.target, FRESH), child_of(b.target, FRESH))
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "permission": self.permission.label,
            "recursive": self.recursive,
        }

    def __str__(self) -> str:
        return f"{self.permission.label} {self.target}{'' if self.recursive else ' (shallow)'}"


def parse_rule(obj: object, where: str = "") -> Rule:
    """A rule from its JSON form ``{target, permission, recursive?}``; errors name ``where``."""

    def err(field: str, reason: str) -> ScopeError:
        return ScopeError(f"{where}.{field}" if where else field, reason)

    if not isinstance(obj, Mapping):
        raise ScopeError(where, "must be an object {target, permission, recursive?}")
    unknown = sorted(str(k) for k in obj if k not in ("target", "permission", "recursive"))
    if unknown:
        raise err(unknown[0], "unknown field")
    if "target" not in obj:
        raise err("target", "is required")
    if "permission" not in obj:
        raise err("permission", "is required")
    try:
        target = normalise_path(obj["target"])
    except ScopeError as exc:
        raise err("target", exc.reason) from None
    try:
        perm = Perm.parse(obj["permission"])
    except ScopeError as exc:
        raise err("permission", exc.reason) from None
    recursive = obj.get("recursive", True)
    if not isinstance(recursive, bool):
        raise err("recursive", "must be true or false")
    return Rule(target, perm, recursive)


def parse_rules(items: object, where: str, *, non_empty: bool = False) -> tuple[Rule, ...]:
    if not isinstance(items, list | tuple):
        raise ScopeError(where, "must be a list of rules")
    if non_empty and not items:
        raise ScopeError(where, "must hold at least one rule")
    if len(items) > MAX_RULES:
        raise ScopeError(where, f"at most {MAX_RULES} rules")
    return tuple(parse_rule(item, f"{where}[{i}]") for i, item in enumerate(items))


def dedupe(rules: Iterable[Rule]) -> tuple[Rule, ...]:
    """Allow lists are sets: drop repeats, keep the first occurrence's order."""
    return tuple(dict.fromkeys(rules))


def rules_json(rules: Iterable[Rule]) -> list[dict[str, Any]]:
    return [r.to_json() for r in rules]


# ------------------------------------------------------------------------------ scopes


class Origin(enum.StrEnum):
    ALLOW = "allow"  # a base allow rule
    EXPLICIT = "explicit"  # a deny of the base scope
    DELEGATED = "delegated"  # the write rule of an outstanding delegation edge


@dataclass(frozen=True, slots=True)
class Layer:
    """One deny layer: the rule and where it came from (an edge, for delegated layers)."""

    rule: Rule
    origin: Origin = Origin.EXPLICIT
    edge_id: str | None = None
    child: str | None = None

    @property
    def cap(self) -> Perm:
        """What this layer leaves at the paths it covers."""
        return Perm.READ if self.rule.permission is Perm.WRITE else Perm.NONE

    def to_json(self) -> dict[str, Any]:
        out = self.rule.to_json()
        out["origin"] = self.origin.value
        if self.origin is Origin.DELEGATED:
            out["edge_id"] = self.edge_id
            out["child"] = self.child
        return out


@dataclass(frozen=True, slots=True)
class Delegation:
    """An outstanding edge as the parent's effective scope sees it."""

    edge_id: str
    child: str
    rules: tuple[Rule, ...]


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    access: Perm
    rule: Rule | None
    origin: Origin | None  # None: no rule matched at all
    layer: Layer | None = None  # the deciding deny layer, when a deny decided

    def rule_json(self) -> dict[str, Any] | None:
        if self.layer is not None:
            return self.layer.to_json()
        if self.rule is None:
            return None
        return {**self.rule.to_json(), "origin": Origin.ALLOW.value}


@dataclass(frozen=True, slots=True)
class Scope:
    allow: tuple[Rule, ...]
    deny: tuple[Layer, ...] = ()

    @classmethod
    def of(cls, allow: Iterable[Rule], deny: Iterable[Rule] = ()) -> Scope:
        return cls(dedupe(allow), tuple(Layer(r) for r in deny))

    @property
    def empty(self) -> bool:
        return not self.allow

    def targets(self) -> set[str]:
        return {r.target for r in self.allow} | {d.rule.target for d in self.deny}

    def access(self, path: str) -> Perm:
        top = Perm.NONE
        for rule in self.allow:
            if rule.permission > top and rule.covers(path):
                top = rule.permission
                if top is Perm.WRITE:
                    break
        if top is Perm.NONE:
            return top
        for layer in self.deny:
            if layer.cap < top and layer.rule.covers(path):
                top = layer.cap
                if top is Perm.NONE:
                    break
        return top

    def decide(self, path: str, wanted: Perm) -> Decision:
        """Access at ``path`` for ``wanted`` with the deciding rule.

        Allowed: the most specific allow granting ``wanted``. Refused with an allow that is
        high enough: the deny layer that caps lowest (most specific first; explicit layers
        before delegated ones, in order). Refused for want of an allow: the best allow that
        matched (read when write was asked), or no rule at all.
        """
        matching = [r for r in self.allow if r.covers(path)]
        top = max((r.permission for r in matching), default=Perm.NONE)
        access = self.access(path)
        if access >= wanted:
            best = _most_specific(r for r in matching if r.permission >= wanted)
            return Decision(True, access, best, Origin.ALLOW)
        if top < wanted:
            best = _most_specific(r for r in matching if r.permission == top)
            return Decision(False, access, best, Origin.ALLOW if best else None)
        capping = [d for d in self.deny if d.cap < wanted and d.rule.covers(path)]
        lowest = min(d.cap for d in capping)
        layer = max(
            (d for d in capping if d.cap == lowest),
            key=lambda d: (len(d.rule.target), d.origin is Origin.EXPLICIT),
        )
        return Decision(False, access, layer.rule, layer.origin, layer)

    def to_json(self) -> dict[str, Any]:
        return {"allow": rules_json(self.allow), "deny": [d.to_json() for d in self.deny]}


def _most_specific(rules: Iterable[Rule]) -> Rule | None:
    best: Rule | None = None
    for rule in rules:
        if best is None or len(rule.target) > len(best.target):
            best = rule
    return best


def effective(base: Scope, delegations: Sequence[Delegation], *, retired: bool = False) -> Scope:
    """Base scope + one write-deny layer per write rule of each outstanding edge.

    ``retired``: the pod's own delegation was reclaimed — it holds nothing any more.
    """
    if retired:
        return Scope(())
    layers = list(base.deny)
    for d in delegations:
        layers += [
            Layer(r, Origin.DELEGATED, d.edge_id, d.child)
            for r in d.rules
            if r.permission is Perm.WRITE
        ]
    return Scope(base.allow, tuple(layers))


def without_delegation(scope: Scope, edge_id: str) -> Scope:
    """``scope`` with exactly the layers of ``edge_id`` removed (a reclaim, as the parent sees it)."""
    return Scope(scope.allow, tuple(d for d in scope.deny if d.edge_id != edge_id))


# ------------------------------------------------------------------------------ coverage


def representatives(targets: Iterable[str], region: Rule | None = None) -> Iterator[str]:
    """One path per class of paths that every rule over ``targets`` treats alike (module
    docstring), restricted to ``region`` when given (its target is added to the targets)."""
    points = set(targets)
    if region is not None:
        points.add(region.target)
    seen: set[str] = set()
    for d in sorted(points):
        for p in (d, child_of(d, FRESH), child_of(child_of(d, FRESH), FRESH)):
            if p not in seen and (region is None or region.covers(p)):
                seen.add(p)
                yield p


@dataclass(frozen=True, slots=True)
class Shortfall:
    """Where a rule is not covered: the path, what the scope gives there and why."""

    rule_index: int
    rule: Rule
    path: str
    access: Perm
    decision: Decision

    def describe(self, whose: str) -> str:
        where = render_path(self.path)
        d = self.decision
        if d.layer is not None and d.layer.origin is Origin.DELEGATED:
            why = f"{where} is delegated to child {d.layer.child} ({d.layer.rule})"
        elif d.layer is not None:
            why = f"{where} is denied by an explicit deny ({d.layer.rule})"
        elif d.rule is not None:
            why = f"{whose} only has {d.access.label} at {where} ({d.rule})"
        else:
            why = f"no rule of {whose} covers {where}"
        return f"{self.rule} is not within {whose}: {why}"


def region_within(inner: Rule, outer: Rule) -> bool:
    """Is every path of ``inner``'s region in ``outer``'s region?"""
    if outer.recursive:
        return is_within(inner.target, outer.target)
    return not inner.recursive and inner.target == outer.target


def _binding(scope: Scope, grant: Sequence[Rule], path: str) -> Scope:
    """``scope`` without the explicit deny layers that do not bind delegation at ``path``:
    those inside which a grant rule names ``path`` (see :func:`shortfall`)."""
    kept = tuple(
        d
        for d in scope.deny
        if d.origin is not Origin.EXPLICIT
        or not any(g.covers(path) and region_within(g, d.rule) for g in grant)
    )
    return scope if len(kept) == len(scope.deny) else Scope(scope.allow, kept)


def shortfall(
    rules: Sequence[Rule], scope: Scope, grant: Sequence[Rule] | None = None
) -> Shortfall | None:
    """The first place where ``scope`` gives less than one of ``rules`` asks, or None when
    every rule lies within the scope (``write`` rules within its write, ``read`` within read).

    With ``grant``, what is measured is what a pod may *delegate* from its effective scope
    ``scope``: everything, less what it has handed out already (delegated layers), less its
    explicit denies — except inside an explicit deny where a grant rule lying within that deny
    names the path. An operator who writes ``deny write /src/core`` and ``grant write
    /src/core`` means "the pod must not write /src/core itself, but may hand it to a child";
    an explicit deny that no such grant rule reopens binds the pod's children too (``deny
    /src/secret`` with ``grant /src`` does not let it delegate /src/secret). This is how an
    explicit deny can be identical to a delegated rule: two layers, of which a reclaim removes
    only the delegated one.
    """
    targets = scope.targets()
    if grant:
        targets |= {g.target for g in grant}
    for i, rule in enumerate(rules):
        for p in representatives(targets, rule):
            at = _binding(scope, grant, p) if grant else scope
            have = at.access(p)
            if have < rule.permission:
                return Shortfall(i, rule, p, have, at.decide(p, rule.permission))
    return None


def write_overlap(a: Scope, b: Scope) -> str | None:
    """A path where both scopes give write, or None when their write regions are disjoint."""
    if a.empty or b.empty:
        return None
    for p in representatives(a.targets() | b.targets()):
        if a.access(p) is Perm.WRITE and b.access(p) is Perm.WRITE:
            return p
    return None


def write_rule_at(scope: Scope, path: str) -> Rule | None:
    """The allow rule that gives ``scope`` write at ``path`` (for conflict messages)."""
    d = scope.decide(path, Perm.WRITE)
    return d.rule if d.allowed else None


def write_regions(scope: Scope) -> list[tuple[Rule, list[Layer]]]:
    """Each write allow with the deny layers that cut into it (for operators' views)."""
    out: list[tuple[Rule, list[Layer]]] = []
    for rule in scope.allow:
        if rule.permission is not Perm.WRITE:
            continue
        cuts = [d for d in scope.deny if d.cap < Perm.WRITE and rule.overlaps(d.rule)]
        out.append((rule, cuts))
    return out
