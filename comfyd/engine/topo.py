"""Graph algorithms over a dependency map `{node_id: [node ids it needs]}`.

Dependencies are passed in explicitly (the caller decides which inputs count: only the links of
declared inputs to nodes that exist), so these functions know nothing of schemas.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence

Dependencies = Mapping[str, Sequence[str]]


def node_sort_key(node_id: str) -> tuple[int, int, str]:
    """Numeric ids in numeric order ("9" before "10"), then the others alphabetically."""
    if node_id.isdigit():
        return (0, int(node_id), node_id)
    return (1, 0, node_id)


def sort_ids(node_ids: Iterable[str]) -> list[str]:
    return sorted(node_ids, key=node_sort_key)


def upstream_closure(deps: Dependencies, targets: Iterable[str]) -> set[str]:
    """The targets and every node they depend on, directly or not (cycles tolerated)."""
    seen: set[str] = set()
    stack = list(targets)
    while stack:
        node_id = stack.pop()
        if node_id in seen:
            continue
        seen.add(node_id)
        stack.extend(dep for dep in deps.get(node_id, ()) if dep not in seen)
    return seen


def find_cycles(deps: Dependencies) -> list[list[str]]:
    """Strongly connected components that form cycles (incl. self-loops), ids sorted.

    Iterative Tarjan, so a long chain cannot hit Python's recursion limit.
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    cycles: list[list[str]] = []
    counter = 0
    for root in sort_ids(deps):
        if root in index:
            continue
        work: list[tuple[str, int]] = [(root, 0)]
        while work:
            node_id, child_pos = work.pop()
            if child_pos == 0:
                index[node_id] = low[node_id] = counter
                counter += 1
                stack.append(node_id)
                on_stack.add(node_id)
            children = [d for d in deps.get(node_id, ()) if d in deps]
            if child_pos < len(children):
                work.append((node_id, child_pos + 1))
                child = children[child_pos]
                if child not in index:
                    work.append((child, 0))
                elif child in on_stack:
                    low[node_id] = min(low[node_id], index[child])
                continue
            if low[node_id] == index[node_id]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node_id:
                        break
                if len(component) > 1 or node_id in deps.get(node_id, ()):
                    cycles.append(sort_ids(component))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node_id])
    cycles.sort(key=lambda c: node_sort_key(c[0]))
    return cycles


class CycleError(ValueError):
    def __init__(self, nodes: list[str]) -> None:
        super().__init__(f"dependency cycle among nodes {', '.join(nodes)}")
        self.nodes = nodes


def topological_order(deps: Dependencies, nodes: Iterable[str] | None = None) -> list[str]:
    """Kahn's algorithm over `nodes` (default: all), ties broken by `node_sort_key`.

    Deterministic: the same graph always gives the same order, whatever the dict order.
    """
    wanted = set(deps if nodes is None else nodes)
    remaining = {n: {d for d in deps.get(n, ()) if d in wanted} for n in wanted}
    dependents: dict[str, list[str]] = {n: [] for n in wanted}
    for node_id, needs in remaining.items():
        for dep in needs:
            dependents[dep].append(node_id)
    ready = [(node_sort_key(n), n) for n, needs in remaining.items() if not needs]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        _, node_id = heapq.heappop(ready)
        order.append(node_id)
        for child in dependents[node_id]:
            needs = remaining[child]
            needs.discard(node_id)
            if not needs:
                heapq.heappush(ready, (node_sort_key(child), child))
    if len(order) != len(wanted):
        raise CycleError(sort_ids(wanted - set(order)))
    return order
