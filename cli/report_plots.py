"""The plots of the reports, each returned as a `data:image/png;base64,...` URI so that a page
embeds it and needs no network: accuracy curves with attack and skipped rounds marked, certified
loss on a log axis, heat maps, outcome lines and bars beside the paper's numbers."""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from cli.outcomes import RunRecord  # noqa: E402

ATTACK_COLOR = "#d62728"
SKIP_COLOR = "#7f7f7f"


def to_data_uri(fig: Figure) -> str:
    """Render `fig` as a PNG data URI and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _series(run: RunRecord, metric: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for r in run.rounds:
        value = r.get("metrics", {}).get(metric)
        if value is not None:
            xs.append(int(r["round"]))
            ys.append(float(value))
    return xs, ys


def _candidate_series(run: RunRecord, metric: str) -> tuple[list[int], list[float], list[bool]]:
    """The gate's measurement of every candidate: rounds, values, accepted."""
    xs, ys, ok = [], [], []
    for r in run.rounds:
        gate = r.get("gate") or {}
        value = gate.get("metrics", {}).get(metric)
        if value is not None:
            xs.append(int(r["round"]))
            ys.append(float(value))
            ok.append(bool(gate.get("accepted")))
    return xs, ys, ok


def _mark_rounds(ax: Any, run: RunRecord, legend: bool) -> None:
    """Grey bands on skipped rounds, red dashed lines on attack rounds."""
    for i, t in enumerate(run.skipped_rounds):
        ax.axvspan(t - 0.4, t + 0.4, color=SKIP_COLOR, alpha=0.25,
                   label="skipped round" if legend and i == 0 else None)  # fmt: skip
    for i, t in enumerate(run.attack_rounds):
        ax.axvline(t, color=ATTACK_COLOR, linestyle="--", linewidth=1,
                   label="attack round" if legend and i == 0 else None)  # fmt: skip


def round_curves(
    run: RunRecord, metrics: Sequence[str], log_metrics: Sequence[str], title: str
) -> str | None:
    """Per-round `metrics` (linear axis) and `log_metrics` (log axis: the global model's value
    and the gate's measurement of each candidate, rejected ones crossed) of one run."""
    linear = [m for m in metrics if _series(run, m)[0]]
    logged = [m for m in log_metrics if _series(run, m)[0] or _candidate_series(run, m)[0]]
    if not linear and not logged:
        return None
    panels = int(bool(linear)) + int(bool(logged))
    fig, axes = plt.subplots(1, panels, figsize=(6.2 * panels, 3.6), squeeze=False)
    axes = list(axes[0])
    if linear:
        ax = axes.pop(0)
        for m in linear:
            xs, ys = _series(run, m)
            ax.plot(xs, ys, marker="o", markersize=3, label=m)
        _mark_rounds(ax, run, legend=True)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("round")
        ax.set_ylabel("accuracy / rate")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    if logged:
        ax = axes.pop(0)
        for m in logged:
            xs, ys = _series(run, m)
            if xs:
                ax.plot(xs, [max(y, 1e-6) for y in ys], marker="o", markersize=3,
                        label=f"{m} (global model)")  # fmt: skip
            cx, cy, ok = _candidate_series(run, m)
            if cx:
                ax.scatter([x for x, a in zip(cx, ok, strict=True) if a],
                           [max(y, 1e-6) for y, a in zip(cy, ok, strict=True) if a],
                           marker="s", s=14, label=f"{m} (candidate, accepted)")  # fmt: skip
                ax.scatter([x for x, a in zip(cx, ok, strict=True) if not a],
                           [max(y, 1e-6) for y, a in zip(cy, ok, strict=True) if not a],
                           marker="x", s=40, color=ATTACK_COLOR,
                           label=f"{m} (candidate, rejected)")  # fmt: skip
        _mark_rounds(ax, run, legend=not linear)
        ax.set_yscale("log")
        ax.set_xlabel("round")
        ax.set_ylabel("certified loss (log)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return to_data_uri(fig)


def compare_curves(runs: Mapping[str, RunRecord], metric: str, title: str) -> str | None:
    """One line per labelled run of per-round `metric`; attack rounds as red dots on each."""
    fig, ax = plt.subplots(figsize=(7, 3.8))
    drawn = False
    for name, run in runs.items():
        xs, ys = _series(run, metric)
        if not xs:
            continue
        drawn = True
        (line,) = ax.plot(xs, ys, marker="o", markersize=2, label=name)
        hits = [(x, y) for x, y in zip(xs, ys, strict=True) if x in set(run.attack_rounds)]
        if hits:
            ax.scatter(*zip(*hits, strict=True), color=ATTACK_COLOR, s=12, zorder=3)
    if not drawn:
        plt.close(fig)
        return None
    ax.set_title(f"{title} (red dots: attack rounds)", fontsize=10)
    ax.set_xlabel("round")
    ax.set_ylabel(metric)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return to_data_uri(fig)


def heatmap(
    rows: Sequence[str],
    cols: Sequence[str],
    color: Sequence[Sequence[float | None]],
    text: Sequence[Sequence[str]],
    title: str,
    colorbar: str,
    vmin: float = 0.0,
    vmax: float = 1.0,
) -> str:
    """A heat map: `color[i][j]` in [vmin, vmax] (None: grey, not run), `text[i][j]` written on
    each cell."""
    import numpy as np

    data = np.array([[math.nan if v is None else v for v in row] for row in color], dtype=float)
    width, height = max(5.5, 2.5 + 0.8 * len(cols)), max(3.0, 1.5 + 0.42 * len(rows))
    fig, ax = plt.subplots(figsize=(width, height))
    cmap = plt.get_cmap("magma_r").copy()
    cmap.set_bad("#dddddd")
    image = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    for i, row in enumerate(text):
        for j, cell in enumerate(row):
            value = data[i, j]
            dark = not math.isnan(value) and (value - vmin) / ((vmax - vmin) or 1) > 0.55
            ax.text(j, i, cell, ha="center", va="center", fontsize=7,
                    color="white" if dark else "black")  # fmt: skip
    fig.colorbar(image, ax=ax, label=colorbar, fraction=0.04)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return to_data_uri(fig)


def outcome_lines(
    xs: Sequence[str],
    series: Mapping[str, Sequence[tuple[float, float] | None]],
    title: str,
    xlabel: str,
) -> str:
    """Outcomes (mean with a std bar) against the levels `xs` of an axis, one line each."""
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for name, points in series.items():
        kept = [(i, p) for i, p in enumerate(points) if p is not None and math.isfinite(p[0])]
        if kept:
            xs_kept, means, stds = zip(*((i, p[0], p[1]) for i, p in kept), strict=True)
            ax.errorbar(xs_kept, means, yerr=stds, marker="o", capsize=3, label=name)
    ax.set_xticks(range(len(xs)), xs, fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return to_data_uri(fig)


def outcome_bars(
    arms: Sequence[str],
    specs: Sequence[str],
    ours: Sequence[Sequence[float | None]],
    paper: Sequence[Sequence[float | None]],
    title: str,
    log: bool,
) -> str:
    """Grouped bars: per arm, one bar per spec (ours), the paper's value as a black diamond."""
    fig, ax = plt.subplots(figsize=(1.6 + 1.6 * len(arms), 3.8))
    width = 0.8 / max(len(specs), 1)
    floor = 1e-3 if log else 0.0
    for j, spec in enumerate(specs):
        xs = [i + (j - (len(specs) - 1) / 2) * width for i in range(len(arms))]
        heights = [floor if v is None else max(v, floor) for v in (row[j] for row in ours)]
        ax.bar(xs, heights, width=width * 0.95, label=spec)
        marks = [(x, row[j]) for x, row in zip(xs, paper, strict=True) if row[j] is not None]
        if marks:
            ax.scatter([x for x, _ in marks], [max(v, floor) for _, v in marks], marker="D",
                       color="black", s=16, zorder=3,
                       label="paper" if j == 0 else None)  # fmt: skip
    ax.set_xticks(range(len(arms)), arms, fontsize=8)
    if log:
        ax.set_yscale("log")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, axis="y", which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return to_data_uri(fig)


def crfl_radius_curves(runs: Mapping[str, RunRecord], title: str) -> str | None:
    """CRFL: share of clean test points certified (and correct) at each radius, one line per
    labelled run, from the per-point radii in crfl_certify.json."""
    from cli.crfl_certify import as_certificate

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    drawn = False
    for name, run in runs.items():
        if run.crfl is None:
            continue
        cert = as_certificate(run.crfl["clean"])
        finite = cert.radius[cert.radius.isfinite()]
        top = float(finite.max()) if len(finite) else 1.0
        grid = [top * i / 100 for i in range(101)]
        ax.plot(grid, [cert.certified_accuracy(r) for r in grid], label=name)
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("L2 radius of the backdoor pattern")
    ax.set_ylabel("certified accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return to_data_uri(fig)
