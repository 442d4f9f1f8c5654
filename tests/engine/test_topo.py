"""Topological order, closures and cycle detection."""

from __future__ import annotations

import random

import pytest

from comfyd.engine.topo import CycleError, find_cycles, sort_ids, topological_order, upstream_closure

DEFAULT_DEPS = {
    "3": ["4", "6", "7", "5"],
    "4": [],
    "5": [],
    "6": ["4"],
    "7": ["4"],
    "8": ["3", "4"],
    "9": ["8"],
}


def test_default_graph_order() -> None:
    assert topological_order(DEFAULT_DEPS) == ["4", "5", "6", "7", "3", "8", "9"]


def test_order_is_deterministic_whatever_the_dict_order() -> None:
    rng = random.Random(0)
    for _ in range(20):
        items = list(DEFAULT_DEPS.items())
        rng.shuffle(items)
        shuffled = {k: list(reversed(v)) for k, v in items}
        assert topological_order(shuffled) == ["4", "5", "6", "7", "3", "8", "9"]


def test_numeric_ids_sort_numerically() -> None:
    assert sort_ids(["10", "9", "b", "a", "100"]) == ["9", "10", "100", "a", "b"]
    assert topological_order({"10": [], "9": [], "2": ["10"]}) == ["9", "10", "2"]


def test_order_respects_every_dependency_in_a_random_dag() -> None:
    rng = random.Random(1)
    ids = [str(i) for i in range(60)]
    deps = {n: [d for d in ids[:i] if rng.random() < 0.1] for i, n in enumerate(ids)}
    order = topological_order(deps)
    position = {n: i for i, n in enumerate(order)}
    assert sorted(order) == sorted(ids)
    assert all(position[d] < position[n] for n, ds in deps.items() for d in ds)


def test_closure_and_subset_order() -> None:
    deps = dict(DEFAULT_DEPS, **{"20": ["5"], "21": []})
    closure = upstream_closure(deps, ["6"])
    assert closure == {"6", "4"}
    assert topological_order(deps, upstream_closure(deps, ["9"])) == ["4", "5", "6", "7", "3", "8", "9"]


def test_cycles_found_and_refused() -> None:
    deps = {"1": ["3"], "2": ["1"], "3": ["2"], "4": ["4"], "5": ["1"], "6": []}
    assert find_cycles(deps) == [["1", "2", "3"], ["4"]]
    with pytest.raises(CycleError) as info:
        topological_order(deps)
    assert info.value.nodes == ["1", "2", "3", "4", "5"]
    assert find_cycles(DEFAULT_DEPS) == []


def test_long_chain_does_not_recurse() -> None:
    deps = {str(i): [str(i + 1)] for i in range(5000)}
    deps["5000"] = ["0"]
    [cycle] = find_cycles(deps)
    assert len(cycle) == 5001
