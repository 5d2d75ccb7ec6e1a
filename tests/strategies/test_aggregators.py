"""Aggregation rules against plain numpy references, Flower's built-ins, and Byzantine outliers."""

from __future__ import annotations

import doctest
import typing
from collections.abc import Callable
from unittest import mock

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import Bulyan, FedMedian, FedTrimmedAvg, Krum, MultiKrum
from hypothesis import given, settings
from hypothesis import strategies as st

from core.config import AggregationConfig, AggregationRuleName
from core.wire import ARRAYS, METRICS, NUM_EXAMPLES
from strategies import aggregators as agg

TOL = {"rtol": 1e-5, "atol": 1e-5}

# --- brute-force references: plain numpy, loops, float64 --------------------------------------


def ref_weighted_mean(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    total = np.zeros(x.shape[1])
    for k in range(len(x)):
        total += w[k] * x[k]
    return total / w.sum()


def ref_median(x: np.ndarray) -> np.ndarray:
    out = []
    for column in x.T:
        values = sorted(column)
        mid = len(values) // 2
        out.append(values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2)
    return np.array(out)


def ref_trimmed_mean(x: np.ndarray, beta: float) -> np.ndarray:
    cut = int(beta * len(x))
    return np.array([np.mean(sorted(column)[cut : len(x) - cut]) for column in x.T])


def ref_sq_dist(a: np.ndarray, b: np.ndarray) -> float:
    return float(sum((float(p) - float(q)) ** 2 for p, q in zip(a, b, strict=True)))


def ref_krum_scores(x: np.ndarray, rows: list[int], f: int) -> list[float]:
    neighbours = max(1, len(rows) - f - 2)
    scores = []
    for i in rows:
        dists = sorted(ref_sq_dist(x[i], x[j]) for j in rows if j != i)
        scores.append(sum(dists[:neighbours]))
    return scores


def ref_krum(x: np.ndarray, f: int) -> np.ndarray:
    scores = ref_krum_scores(x, list(range(len(x))), f)
    return x[scores.index(min(scores))]


def ref_multi_krum(x: np.ndarray, w: np.ndarray, f: int, m: int) -> np.ndarray:
    scores = ref_krum_scores(x, list(range(len(x))), f)
    chosen = sorted(range(len(x)), key=lambda i: scores[i])[:m]
    return ref_weighted_mean(x[chosen], w[chosen])


def ref_iterated_krum(x: np.ndarray, f: int, count: int) -> list[int]:
    remaining, chosen = list(range(len(x))), []
    for _ in range(count):
        scores = ref_krum_scores(x, remaining, f)
        chosen.append(remaining.pop(scores.index(min(scores))))
    return chosen


def ref_bulyan(x: np.ndarray, f: int) -> np.ndarray:
    theta, beta = len(x) - 2 * f, len(x) - 4 * f
    chosen = x[ref_iterated_krum(x, f, theta)]
    out = []
    for column in chosen.T:
        median = np.median(column)
        closest = sorted(column, key=lambda v: abs(v - median))[:beta]
        out.append(np.mean(closest))
    return np.array(out)


def ref_geometric_median(
    x: np.ndarray, w: np.ndarray, nu: float, max_iter: int, tol: float
) -> np.ndarray:
    """RFA's smoothed Weiszfeld (Pillutla et al.), in the model space."""
    alpha = w / w.sum()

    def objective(v: np.ndarray) -> float:
        return sum(a * np.linalg.norm(v - p) for a, p in zip(alpha, x, strict=True))

    median = ref_weighted_mean(x, alpha)
    value = objective(median)
    for _ in range(max_iter):
        b = np.array(
            [a / max(nu, np.linalg.norm(median - p)) for a, p in zip(alpha, x, strict=True)]
        )
        median = ref_weighted_mean(x, b)
        previous, value = value, objective(median)
        if abs(previous - value) <= tol * value:
            break
    return median


def ref_norm_clip(x: np.ndarray, w: np.ndarray, tau: float) -> np.ndarray:
    clipped = [row * min(1.0, tau / np.linalg.norm(row)) for row in x]
    return ref_weighted_mean(np.array(clipped), w)


# --- inputs ------------------------------------------------------------------------------------


def updates(seed: int, k: int, p: int, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random float32 updates and positive weights."""
    rng = np.random.default_rng(seed)
    x = (scale * rng.standard_normal((k, p))).astype(np.float32)
    return torch.from_numpy(x), torch.from_numpy(rng.uniform(0.5, 2.0, k).astype(np.float32))


def check(ours: torch.Tensor, expected: np.ndarray) -> None:
    """Ours stays float32 and matches the float64 reference to TOL."""
    assert ours.dtype == torch.float32
    np.testing.assert_allclose(ours.numpy(), expected, **TOL)


SEEDS = st.integers(0, 2**32 - 1)
BLOCKS = st.sampled_from([3, agg._BLOCK])  # 3: many blocks, ragged last one
GRAM_BLOCKS = st.sampled_from([3, agg._GRAM_BLOCK])


# --- rules vs references -------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(seed=SEEDS, k=st.integers(1, 12), p=st.integers(1, 20))
def test_weighted_mean_matches_reference(seed: int, k: int, p: int) -> None:
    x, w = updates(seed, k, p)
    check(agg.weighted_mean(x, w), ref_weighted_mean(x.double().numpy(), w.double().numpy()))


@settings(max_examples=40, deadline=None)
@given(seed=SEEDS, k=st.integers(1, 40), p=st.integers(1, 20), block=BLOCKS)
def test_median_matches_reference(seed: int, k: int, p: int, block: int) -> None:
    x, w = updates(seed, k, p)
    with mock.patch.object(agg, "_BLOCK", block):
        check(agg.coordinate_median(x, w), ref_median(x.double().numpy()))


@settings(max_examples=40, deadline=None)
@given(
    seed=SEEDS,
    k=st.integers(1, 40),
    p=st.integers(1, 20),
    beta=st.floats(0, 0.49),
    block=BLOCKS,
)
def test_trimmed_mean_matches_reference(seed: int, k: int, p: int, beta: float, block: int) -> None:
    x, w = updates(seed, k, p)
    with mock.patch.object(agg, "_BLOCK", block):
        check(agg.trimmed_mean(x, w, beta), ref_trimmed_mean(x.double().numpy(), beta))


@settings(max_examples=30, deadline=None)
@given(seed=SEEDS, k=st.integers(3, 14), p=st.integers(1, 20), data=st.data(), block=GRAM_BLOCKS)
def test_krum_and_multi_krum_match_reference(
    seed: int, k: int, p: int, data: st.DataObject, block: int
) -> None:
    f = data.draw(st.integers(0, (k - 3) // 2), label="f")
    m = data.draw(st.integers(1, k), label="m")
    x, w = updates(seed, k, p)
    xd, wd = x.double().numpy(), w.double().numpy()
    with mock.patch.object(agg, "_GRAM_BLOCK", block):
        check(agg.krum(x, w, f), ref_krum(xd, f))
        check(agg.multi_krum(x, w, f, m), ref_multi_krum(xd, wd, f, m))
        check(agg.multi_krum(x, w, f), ref_multi_krum(xd, wd, f, k - f))


@settings(max_examples=30, deadline=None)
@given(seed=SEEDS, k=st.integers(3, 16), p=st.integers(1, 12), data=st.data(), block=BLOCKS)
def test_bulyan_matches_reference(
    seed: int, k: int, p: int, data: st.DataObject, block: int
) -> None:
    f = data.draw(st.integers(0, (k - 3) // 4), label="f")
    x, w = updates(seed, k, p)
    with mock.patch.object(agg, "_BLOCK", block):
        check(agg.bulyan(x, w, f), ref_bulyan(x.double().numpy(), f))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bulyan_with_colluding_identical_rows_matches_reference(seed: int) -> None:
    """Duplicate rows make exact ties in distances, scores and sorted columns."""
    x, w = updates(seed, 11, 15)
    x[8:] = x[0] + 0.5  # three colluders send one update
    with mock.patch.object(agg, "_BLOCK", 4):
        check(agg.bulyan(x, w, 2), ref_bulyan(x.double().numpy(), 2))


def test_first_argmin_is_argmin_with_ties() -> None:
    values = np.random.default_rng(0).integers(0, 3, (7, 500)).astype(np.float32)
    np.testing.assert_array_equal(agg._first_argmin(values), values.argmin(0))


@pytest.mark.parametrize(("k", "f"), [(40, 1), (43, 5)])
def test_bulyan_and_median_with_many_rows_match_reference(k: int, f: int) -> None:
    """theta > _NETWORK_MAX_K: the SIMD-sort path, over several blocks."""
    x, w = updates(k, k, 50)
    xd = x.double().numpy()
    with mock.patch.object(agg, "_BLOCK", 16):
        check(agg.bulyan(x, w, f), ref_bulyan(xd, f))
        check(agg.coordinate_median(x, w), ref_median(xd))
        check(agg.trimmed_mean(x, w, 0.1), ref_trimmed_mean(xd, 0.1))


@settings(max_examples=30, deadline=None)
@given(seed=SEEDS, k=st.integers(1, 10), p=st.integers(1, 20), iters=st.integers(0, 25))
def test_geometric_median_matches_reference_iterate_for_iterate(
    seed: int, k: int, p: int, iters: int
) -> None:
    x, w = updates(seed, k, p)
    with mock.patch.object(agg, "_GRAM_BLOCK", 4):
        ours = agg.geometric_median(x, w, max_iter=iters, tol=0.0)
    check(ours, ref_geometric_median(x.double().numpy(), w.double().numpy(), 1e-6, iters, 0.0))


def test_geometric_median_converges_onto_a_dominant_row() -> None:
    """With half the weight on one row the median is that row: distances near 0 stay exact."""
    x, _ = updates(3, 4, 1000, scale=10.0)
    w = torch.tensor([3.0, 1.0, 1.0, 1.0])
    ours = agg.geometric_median(x, w, max_iter=100, tol=0.0)
    np.testing.assert_allclose(ours.numpy(), x[0].numpy(), atol=1e-5)
    expected = ref_geometric_median(x.double().numpy(), w.double().numpy(), 1e-6, 100, 0.0)
    check(ours, expected)


def test_geometric_median_default_stop_is_near_optimal() -> None:
    x, w = updates(5, 9, 200)
    x[:2] *= 20  # two far rows pull the mean away from the median
    xd, alpha = x.double().numpy(), (w / w.sum()).double().numpy()

    def objective(v: np.ndarray) -> float:
        return float(sum(a * np.linalg.norm(v - p) for a, p in zip(alpha, xd, strict=True)))

    best = ref_geometric_median(xd, w.double().numpy(), 1e-6, 1000, 1e-14)
    ours = agg.geometric_median(x, w).double().numpy()
    assert objective(ours) <= objective(best) * (1 + 1e-5)
    assert objective(ref_weighted_mean(xd, alpha)) > objective(best) * (1 + 1e-3)  # not trivial


@settings(max_examples=30, deadline=None)
@given(seed=SEEDS, k=st.integers(1, 10), p=st.integers(1, 20), tau=st.floats(0.1, 10))
def test_norm_clip_matches_reference(seed: int, k: int, p: int, tau: float) -> None:
    x, w = updates(seed, k, p, scale=2.0)
    check(agg.norm_clip(x, w, tau), ref_norm_clip(x.double().numpy(), w.double().numpy(), tau))


def test_weak_dp_is_norm_clip_plus_seeded_gaussian_noise() -> None:
    x, w = updates(0, 5, 20_000)
    out = agg.weak_dp(x, w, 1.0, 0.5, torch.Generator().manual_seed(7))
    again = agg.weak_dp(x, w, 1.0, 0.5, torch.Generator().manual_seed(7))
    other = agg.weak_dp(x, w, 1.0, 0.5, torch.Generator().manual_seed(8))
    noise = out - agg.norm_clip(x, w, 1.0)
    assert torch.equal(out, again) and not torch.equal(out, other)
    torch.testing.assert_close(
        noise, 0.5 * torch.randn(20_000, generator=torch.Generator().manual_seed(7))
    )
    assert abs(float(noise.std()) - 0.5) < 0.02


def test_squared_distances_are_accurate_over_a_million_coordinates() -> None:
    """Block-wise float32 products summed in float64 vs float64 differences."""
    x, _ = updates(1, 4, 1_000_000)
    x[1] = x[0] + 0.01 * x[1]  # a close pair, where ||a||^2 + ||b||^2 - 2ab cancels most
    ours = agg.squared_distances(x).numpy()
    xd = x.double().numpy()
    for i in range(4):
        for j in range(4):
            exact = float(np.sum((xd[i] - xd[j]) ** 2))
            scale = float(np.sum(xd[i] ** 2) + np.sum(xd[j] ** 2))
            assert abs(ours[i, j] - exact) <= 1e-6 * scale, (i, j, ours[i, j], exact)


def test_doc_examples_run() -> None:
    assert doctest.testmod(agg).failed == 0


# --- against Flower's strategies (they run on models; ours on updates) ---------------------------

SHAPES = {"conv.weight": (3, 2, 2), "fc.bias": (5,)}


def models_and_replies(
    seed: int, k: int, counts: np.ndarray | None = None
) -> tuple[torch.Tensor, torch.Tensor, list[Message]]:
    """A global model g, client updates u (K, P), and Flower train replies carrying g + u."""
    rng = np.random.default_rng(seed)
    size = sum(int(np.prod(s)) for s in SHAPES.values())
    g = rng.standard_normal(size).astype(np.float32)
    u = rng.standard_normal((k, size)).astype(np.float32)
    counts = rng.integers(10, 100, k) if counts is None else counts
    replies = []
    for i in range(k):
        model, arrays, offset = g + u[i], ArrayRecord(), 0
        for name, shape in SHAPES.items():
            n = int(np.prod(shape))
            arrays[name] = Array(model[offset : offset + n].reshape(shape))
            offset += n
        metrics = MetricRecord({NUM_EXAMPLES: int(counts[i])})
        content = RecordDict({ARRAYS: arrays, METRICS: metrics})
        replies.append(Message(content, dst_node_id=i + 1, message_type="train"))
    return torch.from_numpy(g), torch.from_numpy(u), replies


def flat(arrays: ArrayRecord) -> np.ndarray:
    return np.concatenate([arrays[name].numpy().ravel() for name in SHAPES])


def weights_of(replies: list[Message]) -> torch.Tensor:
    return torch.tensor([float(r.content[METRICS][NUM_EXAMPLES]) for r in replies])


def iterated_krum_selection(contents: list[RecordDict], f: int, count: int) -> list[RecordDict]:
    """El Mhamdi et al.'s Bulyan selection, in the form Flower's Bulyan accepts."""
    x = np.stack([flat(c[ARRAYS]).astype(np.float64) for c in contents])
    return [contents[i] for i in ref_iterated_krum(x, f, count)]


FlowerCase = tuple[Callable[[], object], Callable[[torch.Tensor, torch.Tensor], torch.Tensor], int]
FLOWER_CASES: dict[str, FlowerCase] = {
    "median-odd": (FedMedian, agg.coordinate_median, 7),
    "median-even": (FedMedian, agg.coordinate_median, 8),
    "trimmed-0.2": (lambda: FedTrimmedAvg(beta=0.2), lambda x, w: agg.trimmed_mean(x, w, 0.2), 10),
    "trimmed-0.3": (lambda: FedTrimmedAvg(beta=0.3), lambda x, w: agg.trimmed_mean(x, w, 0.3), 7),
    "krum": (lambda: Krum(num_malicious_nodes=2), lambda x, w: agg.krum(x, w, 2), 9),
    "multi-krum": (
        lambda: MultiKrum(num_malicious_nodes=2, num_nodes_to_select=4),
        lambda x, w: agg.multi_krum(x, w, 2, 4),
        9,
    ),
    "bulyan-f1": (
        lambda: Bulyan(num_malicious_nodes=1, selection_rule=iterated_krum_selection),
        lambda x, w: agg.bulyan(x, w, 1),
        8,
    ),
    "bulyan-f2": (
        lambda: Bulyan(num_malicious_nodes=2, selection_rule=iterated_krum_selection),
        lambda x, w: agg.bulyan(x, w, 2),
        11,
    ),
}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("case", list(FLOWER_CASES))
def test_matches_flower_on_models(case: str, seed: int) -> None:
    make_strategy, ours, k = FLOWER_CASES[case]
    g, u, replies = models_and_replies(seed, k)
    w = weights_of(replies)
    arrays, _ = make_strategy().aggregate_train(1, replies)  # type: ignore[attr-defined]
    np.testing.assert_allclose((ours(u, w) + g).numpy(), flat(arrays), **TOL)


def test_multi_krum_weights_the_selection_like_flower() -> None:
    """Skewed counts move Flower's MultiKrum; ours follows with the same weights."""
    counts = np.array([1, 1000, 1, 1000, 1, 1000, 1, 1000, 1])
    g, u, replies = models_and_replies(4, 9, counts)
    arrays, _ = MultiKrum(num_malicious_nodes=1, num_nodes_to_select=7).aggregate_train(1, replies)
    w = weights_of(replies)
    ours = agg.multi_krum(u, w, 1, 7) + g
    np.testing.assert_allclose(ours.numpy(), flat(arrays), **TOL)
    assert not np.allclose((agg.multi_krum(u, torch.ones(9), 1, 7) + g).numpy(), flat(arrays))


# --- robustness: f huge rows ---------------------------------------------------------------------


def poisoned(k: int = 11, f: int = 2, p: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    """k - f benign rows near 0.1 N(0, 1), then f rows near 1e6."""
    x, _ = updates(9, k, p, scale=0.1)
    x[k - f :] += 1e6
    return x, x[: k - f]


ROBUST: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "median": agg.coordinate_median,
    "trimmed-mean": lambda x, w: agg.trimmed_mean(x, w, 0.2),  # cuts int(2.2) = 2 = f per side
    "krum": lambda x, w: agg.krum(x, w, 2),
    "multi-krum": lambda x, w: agg.multi_krum(x, w, 2),
    "bulyan": lambda x, w: agg.bulyan(x, w, 2),
}


@pytest.mark.parametrize("rule", list(ROBUST))
def test_robust_rules_stay_within_the_benign_range(rule: str) -> None:
    x, benign = poisoned()
    out = ROBUST[rule](x, torch.ones(len(x)))
    assert bool((out >= benign.min(0).values).all() and (out <= benign.max(0).values).all())


def test_krum_returns_a_benign_row() -> None:
    x, benign = poisoned()
    out = agg.krum(x, torch.ones(len(x)), 2)
    assert any(torch.equal(out, row) for row in benign)


def test_geometric_median_stays_near_the_benign_rows_and_the_mean_does_not() -> None:
    x, benign = poisoned()
    centre = benign.mean(0)
    radius = float(torch.linalg.vector_norm(benign - centre, dim=1).max())
    # breakdown bound for a share a = f/K of outliers: 2(1 - a) / (1 - 2a) radius < 3 radius
    gm = agg.geometric_median(x, torch.ones(len(x)))
    assert float(torch.linalg.vector_norm(gm - centre)) <= 3 * radius
    mean = agg.weighted_mean(x, torch.ones(len(x)))
    assert float(torch.linalg.vector_norm(mean - centre)) > 1e4


def test_norm_clip_bounds_the_aggregate() -> None:
    x, _ = poisoned()
    assert float(torch.linalg.vector_norm(agg.norm_clip(x, torch.ones(len(x)), 0.5))) <= 0.5 + 1e-6
    assert float(torch.linalg.vector_norm(agg.weighted_mean(x, torch.ones(len(x))))) > 0.5


# --- registry, preconditions, inputs ---------------------------------------------------------


def test_registry_names_are_the_config_names() -> None:
    assert set(agg.RULES) == set(typing.get_args(AggregationRuleName))
    assert all(name == rule.name for name, rule in agg.RULES.items())


@pytest.mark.parametrize(
    ("rule", "k", "cfg", "message"),
    [
        ("krum", 6, AggregationConfig(f=2), "krum needs K > 2f + 2: K=6, f=2"),
        ("multi-krum", 6, AggregationConfig(f=2), "multi-krum needs K > 2f + 2 and K >= m: K=6"),
        ("multi-krum", 7, AggregationConfig(f=2, m=8), "multi-krum needs K > 2f + 2 and K >= m"),
        ("bulyan", 10, AggregationConfig(f=2), "bulyan needs K >= 4f + 3: K=10, f=2"),
        ("median", 0, AggregationConfig(), "median needs K >= 1: K=0"),
        ("nonsense", 5, AggregationConfig(), "unknown aggregation rule 'nonsense'"),
    ],
)
def test_check_precondition_names_rule_condition_and_values(
    rule: str, k: int, cfg: AggregationConfig, message: str
) -> None:
    with pytest.raises(ValueError, match=message.replace("+", r"\+")):
        agg.check_precondition(rule, k, cfg)


@pytest.mark.parametrize(("rule", "k", "f"), [("krum", 7, 2), ("bulyan", 11, 2), ("krum", 3, 0)])
def test_check_precondition_accepts_the_smallest_k(rule: str, k: int, f: int) -> None:
    agg.check_precondition(rule, k, AggregationConfig(f=f))
    x, w = updates(0, k, 4)
    assert agg.RULES[rule](x, w, AggregationConfig(f=f), torch.Generator()).shape == (4,)


def test_functions_check_their_own_preconditions() -> None:
    x, w = updates(0, 10, 4)
    with pytest.raises(ValueError, match=r"krum needs K > 2f \+ 2: K=10, f=4"):
        agg.krum(x, w, 4)
    with pytest.raises(ValueError, match=r"bulyan needs K >= 4f \+ 3: K=10, f=2"):
        agg.bulyan(x, w, 2)
    with pytest.raises(ValueError, match="multi-krum needs"):
        agg.multi_krum(x, w, 1, 11)
    with pytest.raises(ValueError, match="multi-krum needs f >= 0 and m >= 0: f=1, m=-1"):
        agg.multi_krum(x, w, 1, -1)
    with pytest.raises(ValueError, match="krum needs f >= 0: f=-1"):
        agg.krum(x, w, -1)
    with pytest.raises(ValueError, match="beta"):
        agg.trimmed_mean(x, w, 0.5)
    with pytest.raises(ValueError, match="non-negative"):
        agg.weighted_mean(x, -w)
    with pytest.raises(ValueError, match="expected 10 weights"):
        agg.coordinate_median(x, w[:3])
    with pytest.raises(ValueError, match="positive sum"):
        agg.multi_krum(x, torch.tensor([0.0] * 9 + [1.0]), 1, 1)


CFG = AggregationConfig(f=1, beta=0.2, m=3, tau=0.5, noise_std=0.1)


DIRECT: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "mean": agg.weighted_mean,
    "median": agg.coordinate_median,
    "trimmed-mean": lambda x, w: agg.trimmed_mean(x, w, 0.2),
    "krum": lambda x, w: agg.krum(x, w, 1),
    "multi-krum": lambda x, w: agg.multi_krum(x, w, 1, 3),
    "bulyan": lambda x, w: agg.bulyan(x, w, 1),
    "geometric-median": agg.geometric_median,
    "norm-clip": lambda x, w: agg.norm_clip(x, w, 0.5),
    "weak-dp": lambda x, w: agg.weak_dp(x, w, 0.5, 0.1, torch.Generator().manual_seed(0)),
}


@pytest.mark.parametrize("name", list(agg.RULES))
def test_registry_passes_the_config_parameters(name: str) -> None:
    x, w = updates(1, 7, 40)
    via_registry = agg.RULES[name](x, w, CFG, torch.Generator().manual_seed(0))
    assert torch.equal(via_registry, DIRECT[name](x, w))


@pytest.mark.parametrize("name", list(agg.RULES))
def test_rules_do_not_mutate_inputs(name: str) -> None:
    x, w = updates(2, 7, 40)
    x_before, w_before = x.clone(), w.clone()
    agg.RULES[name](x, w, CFG, torch.Generator().manual_seed(0))
    assert torch.equal(x, x_before) and torch.equal(w, w_before)


@pytest.mark.parametrize("name", list(agg.RULES))
def test_uses_weights_says_whether_weights_change_the_result(name: str) -> None:
    x, w = updates(3, 7, 40)
    skewed = torch.tensor([50.0, 1, 1, 1, 1, 1, 1])
    rule = agg.RULES[name]
    a = rule(x, w, CFG, torch.Generator().manual_seed(0))
    b = rule(x, skewed, CFG, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) != rule.uses_weights
