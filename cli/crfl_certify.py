"""`certfl crfl-certify RUN_DIR`: CRFL parameter smoothing of a finished run's final model and
the certified radius of every test point (Xie et al., ICML 2021, feature level).

The smoothed classifier votes over `crfl.n-copies` noisy copies (std `crfl.sigma-test`) of
`final.pt`; each point's radius bounds the L2 norm of a backdoor pattern that cannot change its
prediction (certify/crfl.py). For a `backdoor` run the same is done on the triggered test points.
Prints the share certified at each radius and writes every point's numbers to a JSON file.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attacks.registry import load_policies
from certify.crfl import (
    RadiusConstants,
    certified_radius,
    probability_bounds,
    smoothed_votes,
    top_two,
)
from cli.crfl_constants import radius_constants
from core.config import RunConfig, parse_float_list
from core.data import load_splits
from core.models import InputSpec, build_model
from core.seeds import torch_generator
from server.evaluation import eval_subset
from server.run_store import load_checkpoint, read_rounds

DEFAULT_RADII = "0.05,0.1,0.25,0.5,1,2"


@dataclass(frozen=True)
class SmoothedCertificate:
    """Per test point: label, smoothed prediction, vote counts, p_A / p_B bounds, radius."""

    labels: torch.Tensor
    prediction: torch.Tensor
    count_a: torch.Tensor
    count_b: torch.Tensor
    p_a: torch.Tensor
    p_b: torch.Tensor
    radius: torch.Tensor

    def certified(self, radius: float) -> float:
        """Certified rate: share of points whose radius is at least `radius`."""
        return float((self.radius >= radius).double().mean())

    def certified_accuracy(self, radius: float) -> float:
        """Share of points predicted correctly with a radius of at least `radius`."""
        ok = (self.radius >= radius) & (self.prediction == self.labels)
        return float(ok.double().mean())

    def to_json(self) -> dict[str, list]:
        """Every point's numbers as lists (radius inf -> null)."""
        radius = [r if r != float("inf") else None for r in self.radius.tolist()]
        return {
            "label": self.labels.tolist(),
            "prediction": self.prediction.tolist(),
            "count_a": self.count_a.tolist(),
            "count_b": self.count_b.tolist(),
            "p_a_lower": self.p_a.tolist(),
            "p_b_upper": self.p_b.tolist(),
            "radius": radius,
        }


def certify_points(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: RunConfig,
    constants: RadiusConstants,
    generator: torch.Generator,
) -> SmoothedCertificate:
    """Smooth `model` as `crfl.*` says, bound p_A and p_B, and certify every point of `x`."""
    crfl = cfg.crfl
    votes = smoothed_votes(model, x, crfl.sigma_test, crfl.n_copies, generator)
    prediction, count_a, count_b = top_two(votes)
    p_a, p_b = probability_bounds(count_a, count_b, crfl.n_copies, crfl.alpha, crfl.bound)
    radius = certified_radius(p_a, p_b, constants)
    return SmoothedCertificate(y.cpu(), prediction, count_a, count_b, p_a, p_b, radius)


def triggered_points(
    cfg: RunConfig, x: torch.Tensor, y: torch.Tensor, spec: InputSpec
) -> tuple[torch.Tensor, torch.Tensor, int, float] | None:
    """For a `backdoor` run: the points not of the target class with the trigger stamped on,
    their labels, the target class and the trigger's L2 norm; None for other runs."""
    if cfg.roles.attack != "backdoor":
        return None
    from attacks.backdoor import BackdoorParams, apply_trigger, stripe_trigger

    params = BackdoorParams.of(cfg)
    trigger = stripe_trigger(spec, params.trigger_magnitude)
    target = params.backdoor_target
    keep = y != target
    return apply_trigger(x[keep], trigger), y[keep], target, float(trigger.norm())


def certify_run(
    run_dir: Path, overrides: dict[str, Any], n_test: int = 0, seed_purpose: str = "crfl-smooth"
) -> dict[str, Any]:
    """Certify `run_dir/final.pt` on `n_test` test points (0: eval.n-test); a JSON-able summary
    with the constants, their sources and every point's certificate (clean and triggered)."""
    ckpt = load_checkpoint(run_dir / "final.pt")
    load_policies()  # the run config names the policies' `attack.*` keys
    cfg = RunConfig.from_flat({**ckpt["config"], **overrides})
    constants, notes = radius_constants(cfg, read_rounds(run_dir / "rounds.jsonl"))
    splits = load_splits(cfg.data)
    model = build_model(ckpt["model"], splits.spec)
    model.load_state_dict(ckpt["state_dict"])
    test = eval_subset(splits.test, n_test or cfg.eval.n_test, cfg.seed)
    x, y = test.tensors()
    model.eval()
    with torch.no_grad():
        base_acc = float((model(x).argmax(1) == y).double().mean())
    start = time.perf_counter()
    clean = certify_points(model, x, y, cfg, constants, torch_generator(cfg.seed, seed_purpose))
    summary: dict[str, Any] = {
        "run_dir": str(run_dir),
        "round": ckpt["round"],
        "crfl": {k: v for k, v in cfg.to_flat().items() if k.startswith("crfl.")},
        "constants": asdict(constants),
        "sources": notes,
        "n_test": len(y),
        "base_accuracy": base_acc,
        "clean": clean.to_json(),
    }
    triggered = triggered_points(cfg, x, y, splits.spec)
    if triggered is not None:
        xt, yt, target, trigger_norm = triggered
        generator = torch_generator(cfg.seed, seed_purpose, "triggered")
        cert = certify_points(model, xt, yt, cfg, constants, generator)
        summary |= {"target": target, "trigger_l2": trigger_norm, "triggered": cert.to_json()}
        summary["smoothed_backdoor_success"] = float((cert.prediction == target).double().mean())
    summary["seconds"] = time.perf_counter() - start
    return summary


def as_certificate(points: dict[str, list]) -> SmoothedCertificate:
    """A certificate back from `SmoothedCertificate.to_json` (null radius -> inf)."""
    radius = [float("inf") if r is None else r for r in points["radius"]]
    return SmoothedCertificate(
        torch.tensor(points["label"]),
        torch.tensor(points["prediction"]),
        torch.tensor(points["count_a"]),
        torch.tensor(points["count_b"]),
        torch.tensor(points["p_a_lower"], dtype=torch.float64),
        torch.tensor(points["p_b_upper"], dtype=torch.float64),
        torch.tensor(radius, dtype=torch.float64),
    )


def report(summary: dict[str, Any], radii: list[float]) -> str:
    """The constants with their sources and a table of certified shares, as printed."""
    lines = [f"{summary['run_dir']}: final model of round {summary['round']}, "
             f"{summary['n_test']} test points, {summary['seconds']:.1f}s"]  # fmt: skip
    crfl = summary["crfl"]
    lines.append(f"smoothing: M = {crfl['crfl.n-copies']}, sigma_T = {crfl['crfl.sigma-test']}, "
                 f"alpha = {crfl['crfl.alpha']}, bound = {crfl['crfl.bound']}")  # fmt: skip
    lines.append(f"  t_adv = {summary['sources']['t_adv']}")
    for key, value in summary["constants"].items():
        lines.append(f"  {key} = {value:.6g}  [{summary['sources'][key]}]")
    clean = as_certificate(summary["clean"])
    lines.append(f"base model accuracy {summary['base_accuracy']:.3f}, smoothed accuracy "
                 f"{clean.certified_accuracy(0.0):.3f}")  # fmt: skip
    sets = [("clean", clean)]
    if "triggered" in summary:
        radii = sorted({*radii, round(summary["trigger_l2"], 4)})
        lines.append(f"backdoor: target {summary['target']}, trigger L2 norm "
                     f"{summary['trigger_l2']:.4f}, smoothed success on triggered points "
                     f"{summary['smoothed_backdoor_success']:.3f}")  # fmt: skip
        sets.append(("triggered", as_certificate(summary["triggered"])))
    lines.append("| points | radius | certified rate | certified accuracy |")
    lines.append("|---|---|---|---|")
    for name, cert in sets:
        finite = cert.radius[cert.radius.isfinite()]
        median = float(finite.median()) if len(finite) else float("nan")
        for r in radii:
            lines.append(f"| {name} | {r:g} | {cert.certified(r):.3f} | "
                         f"{cert.certified_accuracy(r):.3f} |")  # fmt: skip
        lines.append(f"| {name} | median radius {median:.4g} | | |")
    return "\n".join(lines)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `certfl crfl-certify`."""
    p = subparsers.add_parser(
        "crfl-certify", help="CRFL parameter smoothing and certified radius of a finished run"
    )
    p.add_argument("run_dir", help="a run directory (final.pt, rounds.jsonl)")
    p.add_argument("--n", type=int, default=0, help="test points (0: the run's eval.n-test)")
    p.add_argument("--radii", default=DEFAULT_RADII, help="radii to report, comma-separated")
    p.add_argument("--config", default="", help="flat JSON overriding the run config (crfl.*)")
    p.add_argument("--data-dir", default="", help="overrides data.dir")
    p.add_argument("--json", default="", help="output JSON (default: RUN_DIR/crfl_certify.json)")


def run(args: argparse.Namespace) -> int:
    """Certify the run, print the report, write the JSON."""
    overrides = json.loads(Path(args.config).read_text()) if args.config else {}
    if args.data_dir:
        overrides["data.dir"] = args.data_dir
    run_dir = Path(args.run_dir)
    summary = certify_run(run_dir, overrides, args.n)
    print(report(summary, list(parse_float_list(args.radii))))
    out = Path(args.json) if args.json else run_dir / "crfl_certify.json"
    out.write_text(json.dumps(summary))
    print(f"per-point results: {out}")
    return 0
