"""Second-order graph matching (a quadratic assignment problem) between two graphs of ``n`` nodes each.

A matching is a permutation ``pi`` (node ``i`` of graph s -> node ``pi[i]`` of graph t), i.e. a permutation matrix
``v`` with ``v[i, a] = 1`` iff ``a = pi[i]``. Its score (to maximise; LVM-Med writes the same as minimising the
negative) is

    S(pi) = sum_i c_v[i, pi[i]] + sum_{(i, j) in E_s, (pi[i], pi[j]) in E_t} c_e[(i, j), (pi[i], pi[j])]

with vertex affinities ``c_v`` (n x n) and edge affinities ``c_e`` (|E_s| x |E_t|) between directed edges.

Solver (ours; LVM-Med uses a Lagrange-decomposition dual-ascent solver, not available as a maintained
wheel): two starts (plus ``restarts`` random permutations), each improved by best-improvement 2-swap local search
(all swaps scored at once) until no swap raises ``S``:
(1) the linear assignment of ``c_v`` alone (scipy's ``linear_sum_assignment``), (2) the linear assignment of
``c_v + L`` with the Gilmore-Lawler-style bound ``L[i, a] = sum_{j: (i, j) in E_s} max_{b: (a, b) in E_t}
max(0, c_e[(i, j), (a, b)])``. The best of the two is returned: always a permutation, a local optimum under
swaps, not a certified global one; its optimality gap against brute force over all permutations (n <= 7) is
measured in ``tests/medical/test_lvm_med.py`` and reported in docs/benchmarks.md.
"""

from __future__ import annotations

import itertools

import numpy as np


def edge_lookup(edges: np.ndarray, n: int) -> np.ndarray:
    """``(n, n)`` table: the index of directed edge ``(i, j)`` in ``edges`` (shape ``(2, E)``), or -1."""
    table = np.full((n, n), -1, dtype=np.int64)
    table[edges[0], edges[1]] = np.arange(edges.shape[1])
    return table


def qap_score(perm: np.ndarray, c_v: np.ndarray, c_e: np.ndarray, edges_s: np.ndarray, table_t: np.ndarray) -> float:
    """``S(pi)`` of the module docstring (``table_t = edge_lookup(edges_t, n)``)."""
    vertex = float(c_v[np.arange(len(perm)), perm].sum())
    mapped = table_t[perm[edges_s[0]], perm[edges_s[1]]]
    hit = mapped >= 0
    return vertex + float(c_e[np.flatnonzero(hit), mapped[hit]].sum())


def _scores(perms: np.ndarray, c_v, c_e, edges_s, table_t) -> np.ndarray:
    """``S`` of every row of ``perms`` (``(K, n)``), vectorised."""
    vertex = c_v[np.arange(perms.shape[1])[None, :], perms].sum(axis=1)
    if not c_e.size:
        return vertex
    mapped = table_t[perms[:, edges_s[0]], perms[:, edges_s[1]]]  # (K, E_s): the t edge each s edge lands on
    rows = np.broadcast_to(np.arange(edges_s.shape[1]), mapped.shape)
    return vertex + np.where(mapped >= 0, c_e[rows, np.maximum(mapped, 0)], 0.0).sum(axis=1)


def _local_search(perm, c_v, c_e, edges_s, table_t):
    """Best-improvement 2-swap descent (all swaps scored at once) until no swap raises ``S``."""
    n = len(perm)
    i, j = np.triu_indices(n, 1)
    best = float(_scores(perm[None], c_v, c_e, edges_s, table_t)[0])
    while len(i):
        candidates = np.repeat(perm[None], len(i), axis=0)
        k = np.arange(len(i))
        candidates[k, i], candidates[k, j] = perm[j], perm[i]
        scores = _scores(candidates, c_v, c_e, edges_s, table_t)
        top = int(np.argmax(scores))
        if scores[top] <= best + 1e-12:
            break
        perm, best = candidates[top], float(scores[top])
    return perm, best


def solve_qap(
    c_v: np.ndarray, c_e: np.ndarray, edges_s: np.ndarray, edges_t: np.ndarray, restarts: int = 0, seed: int = 0
) -> np.ndarray:
    """The permutation ``pi`` (``int64``, length n) the solver of the module docstring returns; ``restarts``
    more local searches from random permutations (seeded by ``seed``)."""
    from scipy.optimize import linear_sum_assignment

    c_v = np.asarray(c_v, dtype=np.float64)
    c_e = np.asarray(c_e, dtype=np.float64)
    n = c_v.shape[0]
    table_t = edge_lookup(edges_t, n)
    bound = np.zeros((n, n))
    if c_e.size:
        positive = np.maximum(c_e, 0.0)
        for a in range(n):
            out_t = np.flatnonzero(edges_t[0] == a)
            if len(out_t):
                best_per_s_edge = positive[:, out_t].max(axis=1)  # for each s edge, its best t edge leaving a
                np.add.at(bound[:, a], edges_s[0], best_per_s_edge)
    results = []
    for start in (c_v, c_v + bound):
        _, cols = linear_sum_assignment(-start)
        results.append(_local_search(cols.astype(np.int64), c_v, c_e, edges_s, table_t))
    rng = np.random.default_rng(seed)
    for _ in range(restarts):
        results.append(_local_search(rng.permutation(n).astype(np.int64), c_v, c_e, edges_s, table_t))
    return max(results, key=lambda r: r[1])[0]


def brute_force_qap(c_v, c_e, edges_s, edges_t) -> tuple[np.ndarray, float]:
    """The optimal permutation and score by enumeration (n <= 8): the reference for the solver's gap."""
    n = c_v.shape[0]
    table_t = edge_lookup(edges_t, n)
    best, best_perm = -np.inf, None
    for perm in itertools.permutations(range(n)):
        p = np.asarray(perm)
        score = qap_score(p, c_v, c_e, edges_s, table_t)
        if score > best:
            best, best_perm = score, p
    return best_perm, best
