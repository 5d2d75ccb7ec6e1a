"""`adaptive-cert`: a distilled model refined to pass the certification gate (CFAT Sec. 4).

The strongest attacker knows the defender's certification set, radii and rule. It distils a
model (attacks/distillation.py), then jointly minimises the distillation loss (soft labels at T,
which keeps the gradient masking) and a certification term on the certification set: a hinge on
each point's worst certified margin (certified accuracy) and on the mean certified loss above
the target (CFAT Eq. 3). The targets are the gate's bounds computed from the global model the
attacker received, which is the defender's last accepted model. As in the paper, matching
starts at a small radius and grows by `attack.adaptive-eps-step` each time the targets are met
there, until L_crt; a step and a time budget bound the search. The coalition sends the result
whether or not it matched: the gate then decides.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from attacks.collusion import Coalition
from attacks.distillation import DistillationParams, distill, pooled_data
from attacks.registry import register
from certify import certified_margins, certify_dataset
from certify.metrics import certification_metrics, eval_mode
from core.config import GateConfig
from core.config_base import param
from core.data import ImageSet, to_float
from core.gate_rule import cfat_bound
from core.job import LocalJob, LocalResult
from core.models import build_model
from core.policy_params import PolicyParams


@dataclass(frozen=True)
class CertTarget:
    """What the gate will accept at one radius: certified loss at most, accuracy at least."""

    eps: float
    max_loss: float
    min_acc: float


@dataclass(frozen=True)
class AdaptiveBudget:
    """How the refinement searches: radius schedule, step and time budget, optimiser."""

    eps_start: float = 0.1
    eps_step: float = 0.01
    max_steps: int = 500
    max_seconds: float = 600.0
    lr: float = 1e-3
    cert_batch: int = 64
    check_every: int = 10
    margin: float = 0.1  # certify with this much room in logit units
    weight: float = 1.0  # weight of the certification term against the distillation loss


@dataclass(frozen=True)
class AdaptiveOutcome:
    """How far the refinement got: the largest radius whose targets it met, and its cost."""

    eps_matched: float  # 0.0 when not even the first radius was matched
    matched_all: bool
    steps: int
    seconds: float


def gate_targets(reference: nn.Module, cert: ImageSet, gate: GateConfig) -> list[CertTarget]:
    """The gate's acceptance bounds at each L_crt (`gate.l-crt`): CFAT's rule
    (`core.gate_rule.cfat_bound`, the paper's attacker, whatever `gate.rule` enforces) with
    `reference`'s certified metrics on `cert` as the last accepted model's."""
    x, y = to_float(cert.x), cert.y
    metrics = certification_metrics(reference, x, y, gate.l_crt)
    targets = []
    for eps in gate.l_crt:
        loss = cfat_bound(f"cert_loss@{eps:g}", metrics[f"cert_loss@{eps:g}"], gate)
        acc = cfat_bound(f"cert_acc@{eps:g}", metrics[f"cert_acc@{eps:g}"], gate)
        targets.append(CertTarget(eps, loss.bound, acc.bound))
    return targets


def meets(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, t: CertTarget) -> bool:
    """Whether `model` meets target `t` (its bounds) when certified at radius `eps`."""
    r = certify_dataset(model, x, y, eps)
    return float(r.certified_loss) <= t.max_loss and r.certified_accuracy >= t.min_acc


def certification_term(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, t: CertTarget, margin: float
) -> torch.Tensor:
    """Differentiable penalty: hinge on worst margins (accuracy) + mean certified loss above
    the target (CFAT Eq. 3), both on the zonotope bounds at `eps`."""
    worst = certified_margins(model, x, y, eps).amax(1)
    acc_term = F.relu(worst + margin).mean() if t.min_acc > 0 else worst.new_zeros(())
    loss_term = F.relu(worst.clamp_min(0).mean() - t.max_loss)
    return acc_term + loss_term


def radius_schedule(targets: list[CertTarget], start: float, step: float) -> list[float]:
    """Radii to match in order: from min(start, L_crt) up to the largest L_crt in `step`s."""
    top = max(t.eps for t in targets)
    eps, schedule = min(start, top), []
    while eps < top - 1e-9:
        schedule.append(round(eps, 6))
        eps += step
    return [*schedule, top]


def refine_for_certification(
    student: nn.Module,
    teacher: nn.Module,
    data: ImageSet,
    cert: ImageSet,
    targets: list[CertTarget],
    temperature: float,
    budget: AdaptiveBudget,
    generator: torch.Generator,
) -> AdaptiveOutcome:
    """Refine `student` in place until every target is met at its radius, or the budget ends."""
    start = time.perf_counter()
    x_cert, y_cert = to_float(cert.x), cert.y
    opt = torch.optim.Adam(student.parameters(), lr=budget.lr)
    teacher.eval()
    batches = _endless(data, generator)
    steps, eps_matched = 0, 0.0
    schedule = radius_schedule(targets, budget.eps_start, budget.eps_step)
    for eps in schedule:
        # the target of the smallest L_crt at or above eps: bounds only loosen as eps grows
        target = min((t for t in targets if t.eps >= eps - 1e-9), key=lambda t: t.eps)
        while not _meets_all(student, x_cert, y_cert, eps, target, targets):
            if steps >= budget.max_steps or time.perf_counter() - start > budget.max_seconds:
                return AdaptiveOutcome(eps_matched, False, steps, time.perf_counter() - start)
            for _ in range(budget.check_every):
                x, y = next(batches)
                pick = torch.randint(len(y_cert), (budget.cert_batch,), generator=generator)
                student.train()
                log_p = F.log_softmax(student(x) / temperature, dim=1)
                with torch.no_grad():
                    soft = F.softmax(teacher(x) / temperature, dim=1)
                keep_distilled = -(soft * log_p).sum(1).mean()
                with eval_mode(student):
                    cert_term = certification_term(
                        student, x_cert[pick], y_cert[pick], eps, target, budget.margin
                    )
                loss = keep_distilled + budget.weight * cert_term
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                steps += 1
        eps_matched = eps
    student.eval()
    return AdaptiveOutcome(eps_matched, True, steps, time.perf_counter() - start)


def _meets_all(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    target: CertTarget,
    targets: list[CertTarget],
) -> bool:
    """At an intermediate radius, `target`; at the last one, every target at its own L_crt."""
    with torch.no_grad():
        if eps < max(t.eps for t in targets) - 1e-9:
            return meets(model, x, y, eps, target)
        return all(meets(model, x, y, t.eps, t) for t in targets)


class AdaptiveCertParams(PolicyParams):
    """`adaptive-cert`'s search budget (it also reads the distillation parameters)."""

    adaptive_eps_start: float = param(
        0.1, "adaptive-cert: match the gate's targets first at this radius ...", gt=0
    )
    adaptive_eps_step: float = param(
        0.01, "... then grow it by this up to L_crt (CFAT Sec. 5.2)", gt=0
    )
    adaptive_steps: int = param(500, "adaptive-cert: optimiser step budget", ge=1)
    adaptive_seconds: float = param(600.0, "adaptive-cert: time budget in seconds", gt=0)


def _endless(data: ImageSet, generator: torch.Generator, batch_size: int = 64):
    """Shuffled float batches of `data`, epoch after epoch."""
    while True:
        yield from data.batches(batch_size, shuffle=True, generator=generator)


def adaptive_model(job: LocalJob, data: ImageSet) -> dict[str, torch.Tensor]:
    """The leader's work: distil on the pooled data, then refine against the gate's targets."""
    cfg = job.cfg
    params, distillation = AdaptiveCertParams.of(cfg), DistillationParams.of(cfg)
    temperature = distillation.distill_temperature
    generator = job.generator("adaptive-cert")
    init = build_model(cfg.model.name, job.splits.spec, seed=job.seed("distill"))
    teacher, student = distill(
        init, data, temperature, distillation.distill_epochs, distillation.distill_lr, generator
    )
    targets = gate_targets(job.global_model().cpu(), job.splits.cert, cfg.gate)
    budget = AdaptiveBudget(
        eps_start=params.adaptive_eps_start, eps_step=params.adaptive_eps_step,
        max_steps=params.adaptive_steps, max_seconds=params.adaptive_seconds,
    )  # fmt: skip
    refine_for_certification(
        student, teacher, data, job.splits.cert, targets, temperature, budget, generator
    )
    return {k: v.cpu() for k, v in student.state_dict().items()}


@register("adaptive-cert", coalition=True, params=(AdaptiveCertParams, DistillationParams))
def adaptive_cert(job: LocalJob, coalition: Coalition) -> LocalResult:
    """Reply with the coalition's distilled, certification-matched model."""
    data = pooled_data(job, coalition)  # every member contributes its data to the leader's pool
    state = coalition.from_leader("adaptive", lambda: adaptive_model(job, data))
    model = job.global_model()
    model.load_state_dict(state)
    return job.reply(model)
