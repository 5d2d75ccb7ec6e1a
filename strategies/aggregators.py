"""Robust aggregation rules as pure torch functions on a (K, P) tensor of client updates.

Every rule takes `x`, one row per client reply, each row an update (client model minus the
global model, flattened by core/params.py), and `weights`, one non-negative number per row, and
returns one (P,) update; the server adds it to the global model. No rule mutates its inputs.

Updates, not models. The rules Flower ships run on models. Mean, median, trimmed mean, Krum,
Multi-Krum, Bulyan and the geometric median are translation-equivariant,
`rule(x + c) = rule(x) + c` for any vector c (their distances and order statistics do not move
with the origin), so on updates they give the model they would give on models (up to float
rounding); tests/strategies/test_aggregators.py checks `ours(models - g) + g == Flower(models)`.
Norm clipping and weak DP bound the length of each row, which only means something for updates.

Weights are the example counts clients report, so a Byzantine client chooses its own; the
Flower adapter caps them (agg.weighting, agg.weight-cap) or makes them uniform. Rules use them
only where their paper or Flower does, and never to decide what is an outlier:
- mean, norm-clip, weak-dp (Sun et al. 2019 weight by n_k): the weighted mean;
- multi-krum: selection ignores them, the m selected rows are averaged with them, as Flower's
  MultiKrum does (it averages the selection weighted by "num-examples");
- geometric-median: they are RFA's alphas (the weighted geometric median);
- median, trimmed-mean, krum, bulyan: ignored; these rules are defined unweighted (as in
  Flower), and a count cannot buy a row into their result.

Performance. Coordinate-wise rules sort each column in blocks of `_BLOCK` columns that stay in
cache: with a pruned Batcher sorting network (elementwise min/max over whole rows) up to
`_NETWORK_MAX_K` rows, with numpy's SIMD sort on a transposed copy above. Krum, Multi-Krum,
Bulyan and the geometric median need only pairwise distances, taken from one Gram matrix:
float32 products over column blocks summed in float64. The Gram products, the K x K work and
the sorting run in numpy on the CPU (a tensor on another device is copied over, the result
copied back); the weighted combinations are one torch matrix-vector product. Measured by
bench/aggregators.py.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from core.config import AggregationConfig

_BLOCK = 16_384  # columns per block of the coordinate-wise rules: a block stays in cache
_NETWORK_MAX_K = 32  # above this many rows numpy's SIMD sort beats the sorting network
_GRAM_BLOCK = 8192  # columns per float32 product in the Gram matrix

# Preconditions on the number of replies K, as error messages show them.
_ANY_NEEDS = "K >= 1: K={k}"
_KRUM_NEEDS = "K > 2f + 2: K={k}, f={f}"
_MULTI_KRUM_NEEDS = "K > 2f + 2 and K >= m: K={k}, f={f}, m={m}"
_BULYAN_NEEDS = "K >= 4f + 3: K={k}, f={f}"


# --- the rules ------------------------------------------------------------------------------


def weighted_mean(x: Tensor, weights: Tensor) -> Tensor:
    """Weighted mean of the rows (FedAvg).

    Formula: sum_k w_k x_k / sum_k w_k.
    Precondition: K >= 1; weights finite, non-negative, with a positive sum.
    Reference: McMahan et al., "Communication-Efficient Learning of Deep Networks from
    Decentralized Data", AISTATS 2017.

    >>> x = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 60.0]])
    >>> weighted_mean(x, torch.tensor([1.0, 1.0, 2.0]))
    tensor([ 3.5000, 31.5000])
    """
    _check_rows(x, weights)
    return _combine(_normalised(_checked_weights(weights)), x)


def coordinate_median(x: Tensor, weights: Tensor) -> Tensor:
    """Coordinate-wise median; for even K the mean of the two middle values (as np.median).

    Formula: out_j = median_k x_kj. Weights are ignored.
    Precondition: K >= 1.
    Reference: Yin et al., "Byzantine-Robust Distributed Learning: Towards Optimal Statistical
    Rates", ICML 2018 (Flower's FedMedian).

    >>> x = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 60.0], [1e6, -1e6]])
    >>> coordinate_median(x, torch.ones(4))
    tensor([4., 3.])
    """
    _check_rows(x, weights)
    k = x.shape[0]
    return _order_statistics(x, (k - 1) // 2, k // 2 + 1, _mean)


def trimmed_mean(x: Tensor, weights: Tensor, beta: float) -> Tensor:
    """Coordinate-wise trimmed mean: drop the b = floor(beta * K) smallest and largest values.

    Formula: out_j = mean of the sorted column x_(b+1)j .. x_(K-b)j. Weights are ignored.
    b is computed as `int(beta * K)`, as Flower's FedTrimmedAvg (`trim_mean`) does.
    Precondition: 0 <= beta < 0.5 (so 2b < K), K >= 1.
    Reference: Yin et al., ICML 2018 (Flower's FedTrimmedAvg).

    >>> x = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 60.0], [1e6, -1e6]])
    >>> trimmed_mean(x, torch.ones(4), beta=0.25)
    tensor([4., 3.])
    """
    _check_rows(x, weights)
    if not 0 <= beta < 0.5:
        raise ValueError(f"trimmed-mean needs 0 <= beta < 0.5: beta={beta}")
    k = x.shape[0]
    cut = int(beta * k)
    return _order_statistics(x, cut, k - cut, _mean)


def krum(x: Tensor, weights: Tensor, f: int) -> Tensor:
    """Krum: the row whose K - f - 2 nearest other rows are closest (in squared L2 distance).

    Formula: score_i = sum of ||x_i - x_j||^2 over the K - f - 2 nearest j != i;
    out = x_argmin(score), ties to the lowest index. Weights are ignored.
    Precondition: K > 2f + 2.
    Reference: Blanchard et al., "Machine Learning with Adversaries: Byzantine Tolerant
    Gradient Descent", NeurIPS 2017.

    >>> x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.9, 0.9], [50.0, 50.0]])
    >>> krum(x, torch.ones(5), f=1)
    tensor([0.9000, 0.9000])
    """
    _check_rows(x, weights)
    _require(f >= 0, "krum", "f >= 0: f={f}", f=f)
    _require(x.shape[0] > 2 * f + 2, "krum", _KRUM_NEEDS, k=x.shape[0], f=f)
    scores = _krum_scores(_squared_distances(x), f)
    return x[int(scores.argmin())].clone()


def multi_krum(x: Tensor, weights: Tensor, f: int, m: int = 0) -> Tensor:
    """Multi-Krum: the weighted mean of the m rows with the lowest Krum scores.

    Formula: S = the m rows with the lowest Krum scores (see `krum`; ties by index);
    out = sum_{k in S} w_k x_k / sum_{k in S} w_k. m = 0 means m = K - f.
    Blanchard et al. average the selection uniformly; like Flower's MultiKrum (which weights
    it by "num-examples") we weight it, so uniform weights give the paper's rule.
    Precondition: K > 2f + 2 and 1 <= m <= K; the selected weights have a positive sum.
    Reference: Blanchard et al., NeurIPS 2017; El Mhamdi et al., ICML 2018 (m = K - f).

    >>> x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.9, 0.9], [50.0, 50.0]])
    >>> multi_krum(x, torch.ones(5), f=1, m=2)
    tensor([0.9500, 0.4500])
    """
    _check_rows(x, weights)
    k = x.shape[0]
    _require(f >= 0 and m >= 0, "multi-krum", "f >= 0 and m >= 0: f={f}, m={m}", f=f, m=m)
    m = m or k - f
    _require(k > 2 * f + 2 and k >= m, "multi-krum", _MULTI_KRUM_NEEDS, k=k, f=f, m=m)
    scores = _krum_scores(_squared_distances(x), f)
    coef = np.zeros(k)
    chosen = np.argsort(scores, kind="stable")[:m]
    coef[chosen] = _checked_weights(weights)[chosen]
    return _combine(_normalised(coef), x)


def bulyan(x: Tensor, weights: Tensor, f: int) -> Tensor:
    """Bulyan: theta = K - 2f rows chosen by iterated Krum, then a coordinate-wise trimmed mean.

    Formula: repeat theta times: pick the Krum winner of the remaining rows (with f, and
    max(1, r - f - 2) neighbours among the r remaining) and remove it. Then per coordinate,
    with med the median of the theta chosen values (mean of the two middle ones for even
    theta), out_j = mean of the beta = theta - 2f chosen values closest to med. Weights are
    ignored.
    Flower's Bulyan takes the same coordinate step, but by default chooses its theta rows in
    one Multi-Krum pass (the theta lowest scores among all K) instead of the paper's iterated
    Krum; given an iterated-Krum `selection_rule` it computes this function (tested).
    Precondition: K >= 4f + 3.
    Reference: El Mhamdi et al., "The Hidden Vulnerability of Distributed Learning in
    Byzantium", ICML 2018.

    >>> x = torch.tensor([[0.0], [1.0], [2.0], [3.0], [4.0], [5.0], [100.0]])
    >>> bulyan(x, torch.ones(7), f=1)
    tensor([2.])
    """
    _check_rows(x, weights)
    k = x.shape[0]
    _require(f >= 0, "bulyan", "f >= 0: f={f}", f=f)
    _require(k >= 4 * f + 3, "bulyan", _BULYAN_NEEDS, k=k, f=f)
    theta, beta = k - 2 * f, k - 4 * f
    chosen = _iterated_krum(_squared_distances(x), f, theta)
    return _order_statistics(
        x, 0, theta, functools.partial(_mean_closest_to_median, beta=beta), rows=chosen
    )


def geometric_median(
    x: Tensor, weights: Tensor, nu: float = 1e-6, max_iter: int = 100, tol: float = 1e-6
) -> Tensor:
    """Weighted geometric median by RFA's smoothed Weiszfeld iterations.

    Formula: minimise sum_k a_k ||v - x_k|| with a = weights / sum(weights). Start at
    v = sum_k a_k x_k; repeat at most max_iter times: b_k = a_k / max(nu, ||v - x_k||),
    v = sum_k b_k x_k / sum_k b_k; stop once the objective changes by at most tol times
    itself. Every iterate is a combination of the rows, so the iterations run on K
    coefficients and the Gram matrix; ||v - x_j||^2 = (c - e_j)^T G (c - e_j) stays accurate
    when v nears a row.
    Precondition: K >= 1; weights finite, non-negative, with a positive sum; nu > 0.
    Reference: Pillutla, Kakade, Harchaoui, "Robust Aggregation for Federated Learning",
    IEEE TSP 2022 (RFA).

    >>> x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [100.0, 100.0]])
    >>> geometric_median(x, torch.ones(4), tol=1e-10)
    tensor([0.5000, 0.5000])
    """
    _check_rows(x, weights)
    if nu <= 0:
        raise ValueError(f"geometric-median needs nu > 0: nu={nu}")
    alpha = _normalised(_checked_weights(weights))
    gram = _gram(x)
    coef = alpha
    dist = _distances_to_combination(coef, gram)
    objective = float(alpha @ dist)
    for _ in range(max_iter):
        beta = alpha / np.maximum(dist, nu)
        coef = beta / beta.sum()
        dist = _distances_to_combination(coef, gram)
        previous, objective = objective, float(alpha @ dist)
        if abs(previous - objective) <= tol * objective:
            break
    return _combine(coef, x)


def norm_clip(x: Tensor, weights: Tensor, tau: float) -> Tensor:
    """Norm clipping: scale each update to L2 norm at most tau, then take the weighted mean.

    Formula: out = sum_k w_k x_k min(1, tau / ||x_k||) / sum_k w_k.
    Precondition: tau > 0; weights finite, non-negative, with a positive sum.
    Reference: Sun et al., "Can You Really Backdoor Federated Learning?", 2019.

    >>> x = torch.tensor([[3.0, 4.0], [0.3, 0.4]])
    >>> norm_clip(x, torch.ones(2), tau=1.0)
    tensor([0.4500, 0.6000])
    """
    _check_rows(x, weights)
    if tau <= 0:
        raise ValueError(f"norm-clip needs tau > 0: tau={tau}")
    norms = torch.linalg.vector_norm(x, dim=1).double().cpu().numpy()
    with np.errstate(divide="ignore"):
        scale = np.minimum(1.0, tau / norms)  # a zero row gives inf, so 1
    return _combine(_normalised(_checked_weights(weights)) * scale, x)


def weak_dp(
    x: Tensor, weights: Tensor, tau: float, noise_std: float, generator: torch.Generator
) -> Tensor:
    """Weak differential privacy: norm clipping, then Gaussian noise on the aggregate.

    Formula: out = norm_clip(x, weights, tau) + N(0, noise_std^2 I), the noise drawn from
    `generator` (seeded by the caller, so runs repeat).
    Precondition: tau > 0, noise_std >= 0; weights as for `norm_clip`.
    Reference: Sun et al., "Can You Really Backdoor Federated Learning?", 2019.

    >>> x = torch.tensor([[3.0, 4.0], [0.3, 0.4]])
    >>> weak_dp(x, torch.ones(2), 1.0, 0.0, torch.Generator().manual_seed(0))
    tensor([0.4500, 0.6000])
    """
    if noise_std < 0:
        raise ValueError(f"weak-dp needs noise_std >= 0: noise_std={noise_std}")
    out = norm_clip(x, weights, tau)
    noise = torch.randn(out.shape, generator=generator, dtype=out.dtype, device=generator.device)
    return out.add_(noise.to(out.device), alpha=noise_std)


# --- the registry the Flower adapter uses ----------------------------------------------------


@dataclass(frozen=True)
class AggregationRule:
    """One rule as the run config names it, with what the adapter must know about it."""

    name: str  # the run-config name (core.config.AggregationRuleName)
    uses_weights: bool  # whether client-reported example counts (untrusted) enter the result
    min_replies: Callable[[AggregationConfig], int]  # smallest K the rule accepts
    requirement: str  # that precondition in words, formatted with k, f and m
    apply: Callable[[Tensor, Tensor, AggregationConfig, torch.Generator], Tensor]

    def __call__(
        self, x: Tensor, weights: Tensor, cfg: AggregationConfig, generator: torch.Generator
    ) -> Tensor:
        """Aggregate the (K, P) updates `x` into one (P,) update with the config's parameters."""
        check_precondition(self.name, x.shape[0], cfg)
        return self.apply(x, weights, cfg, generator)


def _one(cfg: AggregationConfig) -> int:
    """The smallest K of the rules that accept any K."""
    return 1


RULES: dict[str, AggregationRule] = {
    rule.name: rule
    for rule in (
        AggregationRule(
            "mean", True, _one, _ANY_NEEDS, lambda x, w, cfg, generator: weighted_mean(x, w)
        ),
        AggregationRule(
            "median", False, _one, _ANY_NEEDS, lambda x, w, cfg, generator: coordinate_median(x, w)
        ),
        AggregationRule(
            "trimmed-mean",
            False,
            _one,
            _ANY_NEEDS,
            lambda x, w, cfg, generator: trimmed_mean(x, w, cfg.beta),
        ),
        AggregationRule(
            "krum",
            False,
            lambda cfg: 2 * cfg.f + 3,
            _KRUM_NEEDS,
            lambda x, w, cfg, generator: krum(x, w, cfg.f),
        ),
        AggregationRule(
            "multi-krum",
            True,
            lambda cfg: max(2 * cfg.f + 3, cfg.m),
            _MULTI_KRUM_NEEDS,
            lambda x, w, cfg, generator: multi_krum(x, w, cfg.f, cfg.m),
        ),
        AggregationRule(
            "bulyan",
            False,
            lambda cfg: 4 * cfg.f + 3,
            _BULYAN_NEEDS,
            lambda x, w, cfg, generator: bulyan(x, w, cfg.f),
        ),
        AggregationRule(
            "geometric-median",
            True,
            _one,
            _ANY_NEEDS,
            lambda x, w, cfg, generator: geometric_median(x, w),
        ),
        AggregationRule(
            "norm-clip",
            True,
            _one,
            _ANY_NEEDS,
            lambda x, w, cfg, generator: norm_clip(x, w, cfg.tau),
        ),
        AggregationRule(
            "weak-dp",
            True,
            _one,
            _ANY_NEEDS,
            lambda x, w, cfg, generator: weak_dp(x, w, cfg.tau, cfg.noise_std, generator),
        ),
    )
}


def check_precondition(rule_name: str, k: int, cfg: AggregationConfig) -> None:
    """Raise ValueError, naming the rule, its precondition and the values, if K replies won't do."""
    rule = RULES.get(rule_name)
    if rule is None:
        raise ValueError(f"unknown aggregation rule {rule_name!r}; allowed: {', '.join(RULES)}")
    if k < rule.min_replies(cfg):
        raise ValueError(f"{rule_name} needs {rule.requirement.format(k=k, f=cfg.f, m=cfg.m)}")


# --- distances -------------------------------------------------------------------------------
# In numpy: an op on small arrays costs microseconds there, while torch's small reductions
# and products can cost milliseconds each on a busy two-core machine (measured).


def squared_distances(x: Tensor) -> Tensor:
    """(K, K) float64 squared L2 distances between the rows of x, from the Gram matrix.

    ||a||^2 + ||b||^2 - 2ab cancels when rows are close relative to their norms; on updates
    (centred on the global model) the norms are of the order of the distances, and the
    absolute error, below 1e-7 (||a||^2 + ||b||^2), stays far below the gaps Krum compares.
    """
    return torch.from_numpy(_squared_distances(x))


def _squared_distances(x: Tensor) -> np.ndarray:
    """`squared_distances` as a numpy array."""
    gram = _gram(x)
    norms = np.diagonal(gram)
    return np.maximum(norms[:, None] + norms[None, :] - 2 * gram, 0.0)


def _gram(x: Tensor) -> np.ndarray:
    """x @ x.T in float64: float32 products over blocks of `_GRAM_BLOCK` columns, summed in float64.

    One float32 product over all P columns loses about 1e-5 relative at P = 1e6; blocks keep
    the error near 1e-8. numpy's products (`a @ a.T` is one BLAS syrk) measured faster than
    torch's here, whose many small parallel products slow down badly on a busy machine. The
    result is made exactly symmetric, so that d(a, b) == d(b, a) and Krum's ties are exact.
    """
    data = x.detach().cpu().numpy()
    gram = np.zeros((len(data), len(data)))
    for start in range(0, data.shape[1], _GRAM_BLOCK):
        block = data[:, start : start + _GRAM_BLOCK]
        gram += block @ block.T
    return (gram + gram.T) / 2


def _distances_to_combination(coef: np.ndarray, gram: np.ndarray) -> np.ndarray:
    """||sum_i coef_i x_i - x_j|| for every j, as sqrt((coef - e_j)^T G (coef - e_j))."""
    delta = coef[None, :] - np.eye(len(coef))
    return np.sqrt(np.maximum(((delta @ gram) * delta).sum(1), 0.0))


def _krum_scores(sq_dist: np.ndarray, f: int) -> np.ndarray:
    """Each row's sum of squared distances to its max(1, K - f - 2) nearest other rows."""
    k = len(sq_dist)
    neighbours = min(max(1, k - f - 2), k - 1)
    others = sq_dist + np.diag(np.full(k, np.inf))
    return np.sort(others, axis=1)[:, :neighbours].sum(1)


def _iterated_krum(sq_dist: np.ndarray, f: int, count: int) -> np.ndarray:
    """Indices of `count` rows picked one at a time by Krum among the rows not yet picked.

    Ties go to the lowest index, here and in `krum`.
    """
    remaining = list(range(len(sq_dist)))
    picked = []
    for _ in range(count):
        scores = _krum_scores(sq_dist[np.ix_(remaining, remaining)], f)
        picked.append(remaining.pop(int(scores.argmin())))
    return np.array(picked)


# --- coordinate-wise order statistics ----------------------------------------------------------


def _order_statistics(
    x: Tensor,
    lo: int,
    hi: int,
    reduce: Callable[[np.ndarray], np.ndarray],
    rows: np.ndarray | None = None,
) -> Tensor:
    """Per column, `reduce` the lo..hi-1 smallest values of x[rows] (a (hi - lo, C) block).

    Runs on the CPU, block by block of `_BLOCK` columns; the result comes back on x's device.
    (Sharing the blocks among two threads measured no faster on the two busy cores here.)
    """
    data = x.detach().cpu().numpy()
    k = len(data) if rows is None else len(rows)
    out = np.empty(data.shape[1], dtype=data.dtype)
    for start in range(0, data.shape[1], _BLOCK):
        block = data[:, start : start + _BLOCK]
        block = block if rows is None else block[rows]
        if k <= _NETWORK_MAX_K:
            kept = _network_sort(np.array(block), lo, hi)
        else:
            kept = _simd_sort(block, lo, hi)
        out[start : start + block.shape[1]] = reduce(kept)
    return torch.from_numpy(out).to(x.device)


def _network_sort(block: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Rows lo..hi-1 of `block` sorted along axis 0, by a sorting network (overwrites block)."""
    rows = list(block)
    spare = np.empty_like(rows[0])
    for a, b in _network(len(rows), lo, hi):
        np.minimum(rows[a], rows[b], out=spare)
        np.maximum(rows[a], rows[b], out=rows[b])
        rows[a], spare = spare, rows[a]
    return np.stack(rows[lo:hi])


def _simd_sort(block: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Rows lo..hi-1 of `block` sorted along axis 0, by numpy's sort of a transposed copy."""
    columns = np.ascontiguousarray(block.T)
    columns.sort(axis=1)
    return columns[:, lo:hi].T


@functools.lru_cache(maxsize=64)
def _network(k: int, lo: int, hi: int) -> tuple[tuple[int, int], ...]:
    """Batcher's odd-even merge sort on k wires, kept to the comparators outputs lo..hi-1 need.

    Built for the next power of two n >= k with wires k..n-1 read as +inf, so comparators
    touching them are no-ops and dropped; then, walking backwards, a comparator stays only if
    a wire it writes is still needed.
    """
    n = 1 << max(0, k - 1).bit_length()
    full = []
    p = 1
    while p < n:
        step = p
        while step >= 1:
            for j in range(step % p, n - step, 2 * step):
                for i in range(min(step, n - j - step)):
                    a, b = i + j, i + j + step
                    if a // (2 * p) == b // (2 * p) and b < k:
                        full.append((a, b))
            step //= 2
        p *= 2
    needed = set(range(lo, hi))
    kept = []
    for a, b in reversed(full):
        if a in needed or b in needed:
            kept.append((a, b))
            needed |= {a, b}
    return tuple(reversed(kept))


def _mean(sorted_rows: np.ndarray) -> np.ndarray:
    """Mean of the kept order statistics (the median's middle one or two, a trimmed mean)."""
    return sorted_rows.mean(0)


def _mean_closest_to_median(sorted_rows: np.ndarray, beta: int) -> np.ndarray:
    """Per column of sorted values, the mean of the beta values closest to the median.

    The beta closest values are consecutive in sorted order: of the windows starting at
    t = 0 .. theta - beta, the first one whose farthest value is nearest the median.
    """
    s = np.ascontiguousarray(sorted_rows)
    theta, columns = s.shape
    median = s[(theta - 1) // 2 : theta // 2 + 1].mean(0)
    reach = np.maximum(median - s[: theta - beta + 1], s[beta - 1 :] - median)
    index = _first_argmin(reach) * columns + np.arange(columns)  # flat index of s[first, j]
    total = np.take(s, index)
    for offset in range(1, beta):
        total += np.take(s, index + offset * columns)
    return total / beta


def _first_argmin(values: np.ndarray) -> np.ndarray:
    """values.argmin(0) by whole-row operations (numpy's argmin along axis 0 is slower).

    The first minimum's index is the number of prefixes whose minimum exceeds the minimum.
    """
    smallest = values.min(0)
    running = values[0].copy()
    first = np.zeros(values.shape[1], dtype=np.intp)
    for row in values[:-1]:
        np.minimum(running, row, out=running)
        first += running > smallest
    return first


# --- shared checks and the weighted combination ------------------------------------------------


def _check_rows(x: Tensor, weights: Tensor) -> None:
    """Reject inputs that are not a float (K, P) tensor, K >= 1, with K weights."""
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"expected updates of shape (K, P) with K >= 1, got {tuple(x.shape)}")
    if x.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"expected float32 or float64 updates, got {x.dtype}")
    if weights.shape != (x.shape[0],):
        raise ValueError(f"expected {x.shape[0]} weights, got shape {tuple(weights.shape)}")


def _checked_weights(weights: Tensor) -> np.ndarray:
    """Weights as float64 numpy; ValueError if any is negative or not finite."""
    w = weights.detach().double().cpu().numpy()
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError(f"weights must be finite and non-negative, got {w.tolist()}")
    return w


def _normalised(w: np.ndarray) -> np.ndarray:
    """w / sum(w); ValueError if the weights in use sum to zero."""
    total = w.sum()
    if total <= 0:
        raise ValueError("weights (of the rows used) must have a positive sum")
    return w / total


def _combine(coef: np.ndarray, x: Tensor) -> Tensor:
    """sum_k coef_k x_k as one matrix-vector product in x's dtype."""
    return torch.from_numpy(coef).to(device=x.device, dtype=x.dtype) @ x


def _require(ok: bool, rule: str, requirement: str, **values: int) -> None:
    """Raise the ValueError check_precondition raises when a rule's precondition fails."""
    if not ok:
        raise ValueError(f"{rule} needs {requirement.format(**values)}")
