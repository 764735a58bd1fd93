"""The pod scope algebra (admin/pods/algebra.py): unit cases and hypothesis properties.

The finite checks (coverage, overlap) are compared with brute force over every path of a small
universe: segments ``a b c`` (the only ones rules use) plus ``z`` (a name no rule mentions),
to depth 5 — two deeper than any rule target, so "direct child" and "deeper" both occur.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from admin.pods.algebra import (
    FRESH,
    Delegation,
    Layer,
    Origin,
    Perm,
    Rule,
    Scope,
    ScopeError,
    effective,
    normalise_path,
    parse_rule,
    parse_rules,
    region_within,
    representatives,
    shortfall,
    without_delegation,
    write_overlap,
    write_regions,
)
from admin.pods.edges import EdgeEvent, EdgeState, IllegalTransition, transition

SEGMENTS = ("a", "b", "c")
UNIVERSE = ["/"] + [
    "/" + "/".join(parts)
    for depth in range(1, 6)
    for parts in itertools.product((*SEGMENTS, "z"), repeat=depth)
]

paths = st.lists(st.sampled_from(SEGMENTS), max_size=3).map(lambda p: "/" + "/".join(p))
perms = st.sampled_from([Perm.READ, Perm.WRITE])
rules = st.builds(Rule, paths, perms, st.booleans())
scopes = st.builds(Scope.of, st.lists(rules, min_size=1, max_size=4), st.lists(rules, max_size=3))
PROPS = settings(max_examples=100, deadline=None, derandomize=True, database=None)


def delegations(n: int) -> st.SearchStrategy[list[Delegation]]:
    return st.lists(st.lists(rules, min_size=1, max_size=3), max_size=n).map(
        lambda groups: [Delegation(f"e{i}", f"c{i}", tuple(g)) for i, g in enumerate(groups)]
    )


# ------------------------------------------------------------------------------ paths and rules


@pytest.mark.parametrize(
    ("raw", "normal"),
    [("/", "/"), ("/src", "/src"), ("/src//core/", "/src/core"), ("//a///b", "/a/b")],
)
def test_paths_normalise(raw: str, normal: str) -> None:
    assert normalise_path(raw) == normal


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("src/core", "absolute"),
        ("", "absolute"),
        ("/src/*.py", "globs"),
        ("/src/[ab]", "globs"),
        ("/src/../etc", "'..'"),
        ("/src/./x", "'.'"),
        ("/src/\x00", "control"),
        ("/" + "x" * 1024, "longer than"),
    ],
)
def test_bad_paths_are_refused_with_a_reason(raw: str, reason: str) -> None:
    with pytest.raises(ScopeError) as info:
        normalise_path(raw)
    assert reason in info.value.reason


def test_a_fresh_segment_is_never_a_valid_path() -> None:
    with pytest.raises(ScopeError):
        normalise_path("/a/" + FRESH)


def test_parse_rule_names_the_failing_field() -> None:
    assert parse_rule({"target": "/a/", "permission": "read"}) == Rule("/a", Perm.READ, True)
    cases = {
        "allow[0].target": {"target": "a", "permission": "read"},
        "allow[0].permission": {"target": "/a", "permission": "admin"},
        "allow[0].recursive": {"target": "/a", "permission": "read", "recursive": "yes"},
        "allow[0].extra": {"target": "/a", "permission": "read", "extra": 1},
    }
    for field, obj in cases.items():
        with pytest.raises(ScopeError) as info:
            parse_rules([obj], "allow")
        assert info.value.path == field
    with pytest.raises(ScopeError) as info:
        parse_rules([], "allow", non_empty=True)
    assert info.value.path == "allow"


def test_recursive_and_shallow_coverage() -> None:
    deep, shallow, root = (
        Rule("/src", Perm.WRITE),
        Rule("/src", Perm.WRITE, False),
        Rule("/", Perm.READ),
    )
    assert deep.covers("/src") and deep.covers("/src/a/b") and not deep.covers("/srcx")
    assert shallow.covers("/src") and shallow.covers("/src/a") and not shallow.covers("/src/a/b")
    assert root.covers("/") and root.covers("/anything/below")
    assert Rule("/", Perm.READ, False).covers("/x") and not Rule("/", Perm.READ, False).covers(
        "/x/y"
    )


def test_access_is_the_highest_allow_capped_by_every_deny() -> None:
    scope = Scope.of(
        [Rule("/src", Perm.WRITE), Rule("/docs", Perm.READ)],
        [Rule("/src/secret", Perm.READ), Rule("/src/vendor", Perm.WRITE)],
    )
    assert scope.access("/src/a") is Perm.WRITE
    assert scope.access("/src/vendor/x") is Perm.READ  # a write-deny lowers to read
    assert scope.access("/src/secret/k") is Perm.NONE  # a read-deny removes access
    assert scope.access("/docs/x") is Perm.READ
    assert scope.access("/etc") is Perm.NONE
    d = scope.decide("/src/vendor/x", Perm.WRITE)
    assert (
        not d.allowed and d.rule == Rule("/src/vendor", Perm.WRITE) and d.origin is Origin.EXPLICIT
    )
    d = scope.decide("/docs/x", Perm.WRITE)
    assert not d.allowed and d.rule == Rule("/docs", Perm.READ) and d.origin is Origin.ALLOW
    d = scope.decide("/etc", Perm.READ)
    assert not d.allowed and d.rule is None and d.rule_json() is None
    d = scope.decide("/src/vendor/x", Perm.READ)
    assert d.allowed and d.rule == Rule("/src", Perm.WRITE)


def test_delegated_write_leaves_read_with_the_parent() -> None:
    base = Scope.of([Rule("/src", Perm.WRITE)])
    eff = effective(
        base, [Delegation("e1", "c", (Rule("/src/core", Perm.WRITE), Rule("/x", Perm.READ)))]
    )
    assert eff.access("/src/core/x") is Perm.READ
    assert eff.access("/src/other") is Perm.WRITE
    assert len(eff.deny) == 1, "read rules are not denied to the parent"
    d = eff.decide("/src/core/x", Perm.WRITE)
    assert d.layer is not None and d.layer.child == "c" and d.layer.origin is Origin.DELEGATED
    assert effective(base, [], retired=True).empty
    ((region, cuts),) = write_regions(eff)
    assert region == Rule("/src", Perm.WRITE) and [c.child for c in cuts] == ["c"]


def test_shortfall_explains_what_is_missing() -> None:
    eff = effective(
        Scope.of([Rule("/src", Perm.WRITE), Rule("/docs", Perm.READ)]),
        [Delegation("e1", "c1", (Rule("/src/core", Perm.WRITE),))],
    )
    assert shortfall([Rule("/src/lib", Perm.WRITE), Rule("/src/core", Perm.READ)], eff) is None
    short = shortfall([Rule("/src/lib", Perm.WRITE), Rule("/src/core/x", Perm.WRITE)], eff)
    assert short is not None and short.rule_index == 1
    assert "delegated to child c1" in short.describe("p")
    short = shortfall([Rule("/docs", Perm.WRITE)], eff)
    assert short is not None and "only has read" in short.describe("p")
    short = shortfall([Rule("/", Perm.READ)], eff)
    assert short is not None and "no rule of p covers /" in short.describe("p")
    short = shortfall([Rule("/src", Perm.WRITE)], eff)
    assert short is not None and short.path.startswith("/src/core")


def test_an_explicit_deny_binds_delegation_unless_a_grant_rule_inside_it_reopens_it() -> None:
    base = Scope.of(
        [Rule("/src", Perm.WRITE)], [Rule("/src/core", Perm.WRITE), Rule("/src/secret", Perm.READ)]
    )
    grant = [Rule("/src", Perm.WRITE), Rule("/src/core", Perm.WRITE)]
    assert shortfall([Rule("/src/core", Perm.WRITE)], base) is not None  # its own write: no
    assert shortfall([Rule("/src/core", Perm.WRITE)], base, grant) is None  # to hand on: yes
    short = shortfall([Rule("/src", Perm.WRITE)], base, grant)  # /src/secret is not reopened
    assert short is not None and short.path.startswith("/src/secret")
    assert "explicit deny" in short.describe("p")
    eff = effective(base, [Delegation("e", "c", (Rule("/src/core", Perm.WRITE),))])
    short = shortfall([Rule("/src/core/x", Perm.WRITE)], eff, grant)  # handed out already
    assert short is not None and "delegated to child c" in short.describe("p")
    assert region_within(Rule("/a/b", Perm.READ), Rule("/a", Perm.WRITE))
    assert region_within(Rule("/a", Perm.READ, False), Rule("/a", Perm.WRITE, False))
    assert not region_within(Rule("/a/b", Perm.READ, False), Rule("/a", Perm.WRITE, False))
    assert not region_within(Rule("/a", Perm.READ), Rule("/a", Perm.WRITE, False))


# ------------------------------------------------------------------------------ properties


@PROPS
@given(rules, st.lists(rules, min_size=1, max_size=4), st.lists(rules, max_size=3))
def test_shortfall_agrees_with_brute_force(rule: Rule, allow: list[Rule], deny: list[Rule]) -> None:
    scope = Scope.of(allow, deny)
    brute = all(scope.access(p) >= rule.permission for p in UNIVERSE if rule.covers(p))
    assert (shortfall([rule], scope) is None) == brute


@PROPS
@given(rules, scopes, st.lists(rules, max_size=3))
def test_delegable_shortfall_agrees_with_brute_force(
    rule: Rule, scope: Scope, grant: list[Rule]
) -> None:
    def delegable(p: str) -> Perm:
        kept = [
            d
            for d in scope.deny
            if not any(g.covers(p) and region_within(g, d.rule) for g in grant)
        ]
        return Scope(scope.allow, tuple(kept)).access(p)

    brute = all(delegable(p) >= rule.permission for p in UNIVERSE if rule.covers(p))
    assert (shortfall([rule], scope, grant) is None) == brute


@PROPS
@given(scopes, scopes)
def test_write_overlap_agrees_with_brute_force(a: Scope, b: Scope) -> None:
    brute = any(a.access(p) is Perm.WRITE and b.access(p) is Perm.WRITE for p in UNIVERSE)
    found = write_overlap(a, b)
    assert (found is not None) == brute
    if found is not None:
        assert a.access(found) is Perm.WRITE and b.access(found) is Perm.WRITE


@PROPS
@given(rules, rules)
def test_rule_overlap_agrees_with_brute_force(a: Rule, b: Rule) -> None:
    assert a.overlaps(b) == any(a.covers(p) and b.covers(p) for p in UNIVERSE)
    assert a.overlaps(b) == b.overlaps(a)


@PROPS
@given(scopes, st.sampled_from(UNIVERSE))
def test_representatives_stand_for_every_path(scope: Scope, path: str) -> None:
    """Some representative gets exactly the access ``path`` gets, from the same rules."""

    def matches(p: str) -> tuple[frozenset[Rule], frozenset[Rule]]:
        return (
            frozenset(r for r in scope.allow if r.covers(p)),
            frozenset(d.rule for d in scope.deny if d.rule.covers(p)),
        )

    assert matches(path) in {matches(p) for p in representatives(scope.targets())} | {
        (frozenset(), frozenset())
    }


@PROPS
@given(scopes, delegations(3))
def test_effective_access_never_exceeds_the_base_allow(base: Scope, ds: list[Delegation]) -> None:
    eff = effective(base, ds)
    allow_only = Scope(base.allow)
    for p in UNIVERSE:
        assert eff.access(p) <= base.access(p) <= allow_only.access(p)


@PROPS
@given(scopes, delegations(3), st.lists(rules, min_size=1, max_size=3))
def test_delegate_then_reclaim_restores_the_effective_scope_exactly(
    base: Scope, ds: list[Delegation], extra: list[Rule]
) -> None:
    before = effective(base, ds)
    d = Delegation("new", "child", tuple(extra))
    after = effective(base, [*ds, d])
    restored = without_delegation(after, d.edge_id)
    assert restored == before
    assert [restored.access(p) for p in UNIVERSE] == [before.access(p) for p in UNIVERSE]


@PROPS
@given(scopes, delegations(2), rules)
def test_removing_a_delegated_layer_never_removes_an_explicit_deny(
    base: Scope, ds: list[Delegation], twin: Rule
) -> None:
    twin = Rule(twin.target, Perm.WRITE, twin.recursive)
    explicit = Scope(base.allow, (*base.deny, Layer(twin)))
    d = Delegation("twin", "child", (twin,))
    eff = effective(explicit, [*ds, d])
    same = [layer for layer in eff.deny if layer.rule == twin]
    assert len(same) >= 2, "the explicit deny and the delegated one are two layers"
    gone = without_delegation(eff, "twin")
    left = [layer for layer in gone.deny if layer.rule == twin and layer.origin is Origin.EXPLICIT]
    assert len(left) == sum(1 for layer in explicit.deny if layer.rule == twin)
    assert gone.access(twin.target) <= Perm.READ


@PROPS
@given(scopes, st.sampled_from(UNIVERSE), perms)
def test_decisions_are_consistent(scope: Scope, path: str, wanted: Perm) -> None:
    d = scope.decide(path, wanted)
    assert d.access == scope.access(path)
    assert d.allowed == (d.access >= wanted)
    if d.rule is not None:
        assert d.rule.covers(path)
    if d.layer is not None:
        assert not d.allowed and d.layer.cap < wanted


# ------------------------------------------------------------------------------ edges


def test_edge_transitions() -> None:
    assert transition("outstanding", EdgeEvent.RECLAIM) == (EdgeState.RECLAIMED, True)
    assert transition(EdgeState.RECLAIMED, EdgeEvent.RECLAIM) == (EdgeState.RECLAIMED, False)
    assert transition(EdgeState.OUTSTANDING, EdgeEvent.REPARENT) == (EdgeState.OUTSTANDING, True)
    with pytest.raises(IllegalTransition):
        transition(EdgeState.RECLAIMED, EdgeEvent.REPARENT)
    with pytest.raises(ValueError):
        transition("lost", EdgeEvent.RECLAIM)
