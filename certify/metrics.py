"""Certified accuracy and certified loss over a data set (CFAT Sec. 3), in memory-bounded chunks.

certified accuracy = share of points that are both certified (Eq. 1) and correctly classified;
certified loss     = mean over the set of max(0, max_{q != y} upper(z_q - z_y))       (Eq. 3).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from certify.allocator import retain_freed_memory
from certify.analysis import Box, certified_margins, linf_region, propagate
from certify.trace import Step, trace

DEFAULT_BUDGET_BYTES = 256 * 2**20
# Peak working memory of one layer relative to the abstract values before and after it
# (unfold columns, per-window products, canvases).
_TEMPORARY_FACTOR = 3
# On CPU a chunk's typical working memory is also capped here. With freed memory kept in the
# heap (certify/allocator.py) bigger chunks run faster up to about this size (conv-small at eps
# 0.1 on 2 threads: 24 points per chunk 1.5x faster than 5), then slower again past the caches.
_CPU_CHUNK_BYTES = 192 * 2**20
_CPU_MIN_CHUNK = 8  # below this, per-operation overhead dominates (budget permitting)


@dataclass(frozen=True)
class CertResult:
    """Per-sample verdicts and margins, and the two set-level metrics the gate compares."""

    certified: torch.Tensor  # bool (N,): every margin < 0
    correct: torch.Tensor  # bool (N,): the model classifies the clean point correctly
    margins: torch.Tensor  # (N, C): upper(z_q - z_y), -inf at q = y
    worst_margin: torch.Tensor  # (N,): max over q != y
    certified_accuracy: float
    certified_loss: torch.Tensor  # scalar; differentiable when asked for
    eps: float
    method: str


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Run `model` in eval mode (the semantics certified) and restore every module's mode."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.train(training)


def bytes_per_sample(
    steps: tuple[Step, ...], x: torch.Tensor, eps: float, method: str, sound_fp: bool = False
) -> int:
    """Working memory per sample of a dry run on `x` at `eps` (abstract values x a factor).

    The ReLU symbol blocks grow with the number of crossing neurons, so this depends on eps
    and the data: at eps = 1 (nearly every ReLU crossing) it is an upper bound.
    """
    with torch.no_grad():
        p = propagate(steps, *linf_region(x, eps), method, sound_fp)
    item = 8 if sound_fp else x.element_size()
    return -(-_TEMPORARY_FACTOR * p.peak_numel * item // x.shape[0])


def chunk_size(
    steps: tuple[Step, ...],
    x: torch.Tensor,
    eps: float,
    method: str,
    budget_bytes: int,
    sound_fp: bool = False,
    cpu_bytes: int = _CPU_CHUNK_BYTES,
    cpu_min: int = _CPU_MIN_CHUNK,
) -> int:
    """Points per chunk: the worst case (eps = 1) must fit `budget_bytes`; on CPU the typical
    case (a dry run on 8 points at `eps`) should also fit `cpu_bytes` (192 MiB on torch's 2
    threads here), unless that leaves fewer than `cpu_min` points. On a single thread the best
    size is smaller (conv-small at eps 0.1: 12 to 24 points, 1.3x faster than 3 or 48), so the
    gate's single-threaded workers ask for 128 MiB and no minimum.

    The dry run at `eps` is skipped where the budget decides alone (it allows `cpu_min` points
    or fewer), and runs on no more points than the budget allows: on CIFAR-10's cifar-cnn one
    point's worst case is about 1 GiB, and the 8-point dry run took 4-7 s of every gate round.
    """
    chunk = max(1, budget_bytes // bytes_per_sample(steps, x[:1], 1.0, method, sound_fp))
    if x.device.type == "cpu" and chunk > cpu_min:
        typical = bytes_per_sample(steps, x[: min(8, chunk)], eps, method, sound_fp)
        chunk = min(chunk, max(cpu_min, cpu_bytes // typical))
    return chunk


def certify_dataset(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    method: str = "zonotope",
    budget_bytes: int = DEFAULT_BUDGET_BYTES,
    sound_fp: bool = False,
    differentiable: bool = False,
    box: Box = (0.0, 1.0),
    progress: Callable[[int, int], None] | None = None,
    chunk: int | None = None,
) -> CertResult:
    """Certify every point of `x` (in [0, 1], model dtype and device) at L-inf radius `eps`.

    Points are processed in chunks sized so that the analysis' working memory stays within
    `budget_bytes` even if every ReLU crossed (on CPU also, typically, within 192 MiB, which is
    faster); with `differentiable=True` the autograd graph of every chunk is kept on top of
    that, so that `certified_loss.backward()` reaches the parameters. `sound_fp` makes the
    verdicts hold for the float32 network as executed (see certify/fp.py). `progress(done,
    total)` is called after every chunk. `chunk` fixes the points per chunk (None: sized as
    above), e.g. when a caller certifies a set in slices and has sized it once. On the CPU the
    process keeps freed memory in its heap from then on (`certify/allocator.py`).
    """
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x has {x.shape[0]} points but y has {y.shape[0]} labels")
    if x.shape[0] == 0:
        raise ValueError("certify_dataset needs at least one point")
    steps = trace(model)
    n = x.shape[0]
    if x.device.type == "cpu":
        retain_freed_memory()
    if chunk is None:
        chunk = chunk_size(steps, x, eps, method, budget_bytes, sound_fp)
    margins, correct = [], []
    grad = torch.enable_grad() if differentiable else torch.no_grad()
    with eval_mode(model), grad:
        for start in range(0, n, chunk):
            xc, yc = x[start : start + chunk], y[start : start + chunk]
            margins.append(certified_margins(steps, xc, yc, eps, method, sound_fp, box))
            with torch.no_grad():
                correct.append(model(xc).argmax(1) == yc)
            if progress is not None:
                progress(min(start + chunk, n), n)
    all_margins = torch.cat(margins)
    worst = all_margins.amax(1)
    certified = worst.detach() < 0
    is_correct = torch.cat(correct)
    return CertResult(
        certified=certified,
        correct=is_correct,
        margins=all_margins,
        worst_margin=worst,
        certified_accuracy=float((certified & is_correct).float().mean()),
        certified_loss=worst.clamp_min(0).mean(),
        eps=float(eps),
        method=method,
    )


def certification_metrics(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    radii: Iterable[float],
    method: str = "zonotope",
    budget_bytes: int = DEFAULT_BUDGET_BYTES,
    sound_fp: bool = False,
) -> dict[str, float]:
    """`cert_acc@<eps>` and `cert_loss@<eps>` (CFAT Eq. 1 and 3) of `model` on the points `x`
    (in [0, 1], on the model's device) with labels `y`, for every radius in `radii`."""
    metrics = {}
    for eps in radii:
        result = certify_dataset(
            model, x, y, eps, method=method, budget_bytes=budget_bytes, sound_fp=sound_fp
        )
        metrics[f"cert_acc@{eps:g}"] = result.certified_accuracy
        metrics[f"cert_loss@{eps:g}"] = float(result.certified_loss)
    return metrics
