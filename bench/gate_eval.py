"""The gate against honest training and against attacks, CFAT's rule beside the calibrated one
(run by hand; long: see --help for sizes).

    nice -n 19 .venv/bin/python bench/gate_eval.py --out /tmp/gate-eval

One invocation runs real `flwr run` simulations on MNIST (conv-small, PGD training, median):
(a) benign runs (no attacker) of --benign-rounds rounds for each seed;
(b) attacked runs for each seed and policy (distillation, logit-scaling, backdoor, aru,
    aru-extract, replace; 6 of 10 clients collude, attacking when 3 of the 5 sampled are
    theirs): "early" attacks from round 1 of a fresh run (through the warm-up), and "late"
    attacks near convergence: a run continuing from the benign run's final model and gate state
    (`init-checkpoint`, `gate.init-state`), attacking from its first round;
(c) `adaptive-cert` near convergence against a gate certifying --adaptive-n-cert points (a fresh
    gate started on the converged model: the strongest attacker, knowing that set);
(d) optionally (--cfat-enforced-seeds) the same attacked runs with CFAT's rule enforced, for the
    global model CFAT would have let through (PGD at T).

Both rules judge the same candidates: every run enforces one rule and judges with the other as a
shadow rule (`gate.shadow-rules`), both against the models actually accepted. For CFAT, whose
reference is the previous global model, that is exactly its verdict on the candidate had it been
enforced up to here. What a shadow verdict cannot show is where the other rule would have taken
the federation after letting an attack through (an accepted attack becomes CFAT's reference);
(d) shows that.
The bench replays every run's gate records with `core.gate_rule` (checking that the
replayed verdicts equal the recorded ones) to get each rule's reference per metric.

Runs are kept under --out; a rerun skips finished runs, so an interrupted bench resumes, and
--report-only prints the tables from whatever finished. Attack rounds come from each run's
ground_truth.jsonl; for aru-extract only rounds from the E-th attacked one on send a model
(before, the colluders extract and reply honestly).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from attacks.collusion import read_ledger  # noqa: E402
from attacks.registry import load_policies  # noqa: E402
from cli.simulation import run_simulation  # noqa: E402
from core.config import GateConfig, RunConfig  # noqa: E402
from core.gate_rule import (  # noqa: E402
    GateState,
    Measurement,
    is_loss,
    judge,
    metric_names,
    remember,
    rule_bounds,
    with_initial,
)
from core.policy_params import params_of  # noqa: E402
from server.run_store import read_rounds  # noqa: E402
from strategies.gate import STATE_VERSION  # noqa: E402

POLICIES = ("distillation", "logit-scaling", "backdoor", "aru", "aru-extract", "replace")
RULES = ("calibrated", "cfat")
EXTRACT_ROUNDS = 2

COMMON = (
    "data.n-cert={n_cert} data.n-val=5000 data.max-client-samples=600 model.name='conv-small' "
    "eval.n-test=500 gate.enabled=true gate.l-crt='0.1' "
)
ATTACK = (
    "roles.malicious-fraction=0.6 roles.attack='{policy}' roles.min-colluders=3 "
    "roles.attack-start-round=1 "
)
# the bench's sizes of the policies' own keys; each run passes those its policy reads
ATTACK_KEYS = {
    "rendezvous-s": "5.0",
    "distill-epochs": "5",
    "nonrobust-epochs": "5",
    "extract-rounds": str(EXTRACT_ROUNDS),
    "extract-epochs": "1",
    "adaptive-seconds": "{adaptive_s}",
}


def attack_keys(policy: str, adaptive_s: float) -> str:
    """`ATTACK` for `policy`, with the `ATTACK_KEYS` that `policy` reads (a key a policy does
    not read is refused by the run config)."""
    reads = {name for group in params_of(policy) for name in group.model_fields}
    chosen = " ".join(
        f"attack.{key}={value}" for key, value in ATTACK_KEYS.items()
        if key.replace("-", "_") in reads
    )  # fmt: skip
    return ATTACK.format(policy=policy) + chosen.format(adaptive_s=adaptive_s) + " "


@dataclass(frozen=True)
class Spec:
    """One simulation: its name, run-config overrides and number of virtual clients."""

    name: str
    overrides: str
    clients: int


def rules_keys(enforce: str) -> str:
    other = next(r for r in RULES if r != enforce)
    return f"gate.rule='{enforce}' gate.shadow-rules='{other}' "


def run(spec: Spec, out: Path, data_dir: Path) -> Path | None:
    """The finished run directory of `spec` (run now unless already done), None if it failed."""
    run_dir = out / "runs" / spec.name
    if (run_dir / "done").is_file():
        return run_dir
    config = (
        f"data.dir='{data_dir}' output-dir='{out / 'runs'}' run-name='{spec.name}' "
        + spec.overrides
    )
    start = time.perf_counter()
    print(f"[gate_eval] {spec.name}: running ({spec.clients} clients)", flush=True)
    proc = run_simulation(REPO, config, spec.clients, out / "homes" / spec.name, timeout=7200)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    (out / "logs" / f"{spec.name}.log").write_text(proc.stdout)
    ok = (run_dir / "done").is_file()
    took = time.perf_counter() - start
    print(f"[gate_eval] {spec.name}: {'done' if ok else 'FAILED'} in {took:.0f}s", flush=True)
    return run_dir if ok else None


def gate_cfg(run_dir: Path) -> GateConfig:
    flat = json.loads((run_dir / "config.json").read_text())
    # the gate's section only: runs written before the policies declared their own keys hold
    # every `attack.*` key, which a config of today refuses for a policy that does not read it
    return RunConfig.from_flat({k: v for k, v in flat.items() if not k.startswith("attack.")}).gate


@dataclass(frozen=True)
class Judged:
    """One candidate of a run: its metrics and each rule's reference and verdict."""

    round: int
    metrics: dict[str, float]
    references: dict[str, dict[str, float]]  # rule -> metric -> reference of its window bound
    accepted: dict[str, bool]  # rule -> verdict
    warmup: dict[str, bool]
    enforced: str
    pgd_t_acc: float


def replay(run_dir: Path, start: GateState | None = None) -> tuple[list[Judged], GateState, int]:
    """Replay the gate over the run's records: each rule's verdict and references given the
    models actually accepted, the final state, and how many replayed verdicts of the enforced
    rule differ from the recorded ones (should be 0). `start`: the state the run continued from
    (`gate.init-state`), when it had one."""
    cfg = gate_cfg(run_dir)
    state = start or GateState()
    keep = max(cfg.history, cfg.window)
    judged, mismatches = [], 0
    for record in read_rounds(run_dir / "rounds.jsonl"):
        gate = record["gate"]
        if not gate:
            continue
        if gate.get("initial"):
            state = with_initial(state, Measurement.of(0, gate["initial"]))
        rnd, metrics = record["round"], gate["metrics"]
        refs, verdicts, warm = {}, {}, {}
        for rule in RULES:
            rb = rule_bounds(rule, state, cfg, rnd)
            decision = judge(metrics, rb)
            verdicts[rule], warm[rule] = decision.accepted, decision.warmup
            refs[rule] = {
                b.metric: b.reference
                for b in rb.bounds
                if b.reference is not None and b.criterion in ("window", "ratio", "growth")
            }
        mismatches += verdicts[gate["rule"]] != gate["accepted"]
        if gate["accepted"]:
            state = remember(state, Measurement.of(rnd, metrics), keep)
        pgd_t = record["metrics"].get("pgd_t_acc", math.nan)
        judged.append(Judged(rnd, metrics, refs, verdicts, warm, gate["rule"], pgd_t))
    return judged, state, mismatches


def save_state(state: GateState, path: Path) -> Path:
    path.write_text(json.dumps({"version": STATE_VERSION, "state": state.to_dict()}))
    return path


def attack_rounds(run_dir: Path, policy: str) -> set[int]:
    """Rounds whose candidate carried the attack, from the colluders' ground truth."""
    truth = read_ledger(run_dir, "ground_truth.jsonl") if run_dir else []
    rounds = sorted({e["round"] for e in truth if e["attacked"]})
    if policy == "aru-extract":
        rounds = rounds[EXTRACT_ROUNDS - 1 :]
    return set(rounds)


def badness(metric: str, value: float, ref: float) -> float:
    """How much worse than its reference a value is: loss / ref, or ref / accuracy (>1 worse)."""
    if is_loss(metric):
        return value / ref if ref > 0 else math.inf
    return ref / value if value > 0 else math.inf


def fmt(x: float) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3g}"


def main() -> None:
    load_policies()  # the policies' `attack.*` keys, before any run config is parsed
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("/tmp/gate-eval"))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--benign-rounds", type=int, default=40)
    p.add_argument("--benign-clients", type=int, default=20)
    p.add_argument("--attack-rounds", type=int, default=3)
    p.add_argument("--attack-clients", type=int, default=10)
    p.add_argument("--policies", default=",".join(POLICIES))
    p.add_argument("--adaptive-n-cert", type=int, default=100)
    p.add_argument("--adaptive-seconds", type=float, default=240.0)
    p.add_argument("--cfat-enforced-seeds", type=int, default=1)
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--data-dir", default=os.environ.get("CERTFL_DATA", "../shared/data"))
    args = p.parse_args()
    out, data_dir = args.out.resolve(), Path(args.data_dir).resolve()
    (out / "states").mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    policies = [q for q in args.policies.split(",") if q]
    execute = (lambda s: run(s, out, data_dir)) if not args.report_only else (
        lambda s: (out / "runs" / s.name) if (out / "runs" / s.name / "done").is_file() else None
    )  # fmt: skip
    common = COMMON.format(n_cert=1000)

    benign: dict[int, Path] = {}
    attacked: list[tuple[str, str, int, str, Path]] = []  # policy, timing, seed, enforced, dir

    def attacked_spec(policy: str, timing: str, seed: int, enforce: str) -> Spec | None:
        keys = common + rules_keys(enforce) + attack_keys(policy, args.adaptive_seconds)
        keys += f"seed={seed} num-rounds={args.attack_rounds} "
        suffix = "" if enforce == "calibrated" else "-cfat"
        if timing == "late":
            if seed not in benign:
                return None
            _, state, _ = replay(benign[seed])
            state_path = save_state(state, out / "states" / f"benign-s{seed}.json")
            keys += (
                f"init-checkpoint='{benign[seed] / 'final.pt'}' gate.init-state='{state_path}' "
                "gate.warmup-rounds=0 "  # CFAT's warm-up was spent in the benign run
            )
        return Spec(f"{policy}-{timing}-s{seed}{suffix}", keys, args.attack_clients)

    def adaptive_spec(seed: int) -> Spec | None:
        """The adaptive attack near convergence against a small certification set."""
        if seed not in benign:
            return None
        keys = COMMON.format(n_cert=args.adaptive_n_cert) + rules_keys("calibrated")
        keys += attack_keys("adaptive-cert", args.adaptive_seconds)
        keys += (
            f"seed={seed} num-rounds={args.attack_rounds} gate.warmup-rounds=0 "
            f"init-checkpoint='{benign[seed] / 'final.pt'}' "
        )
        return Spec(f"adaptive-cert-late-s{seed}", keys, args.attack_clients)

    # seed by seed, so that an interrupted bench has whole seeds to report
    for seed in seeds:
        spec = Spec(
            f"benign-s{seed}",
            common + rules_keys("calibrated") + f"seed={seed} num-rounds={args.benign_rounds} "
            "roles.malicious-fraction=0.0",
            args.benign_clients,
        )
        if (d := execute(spec)) is not None:
            benign[seed] = d
        for policy, timing in [(q, t) for t in ("early", "late") for q in policies]:
            spec = attacked_spec(policy, timing, seed, "calibrated")
            if spec is not None and (d := execute(spec)) is not None:
                attacked.append((policy, timing, seed, "calibrated", d))
        spec = adaptive_spec(seed)
        if spec is not None and (d := execute(spec)) is not None:
            attacked.append(("adaptive-cert", "late", seed, "calibrated", d))
    # CFAT enforced, for the global model it would have let through (last: the least needed)
    for seed in seeds[: args.cfat_enforced_seeds]:
        for policy, timing in [(q, t) for t in ("early", "late") for q in policies]:
            spec = attacked_spec(policy, timing, seed, "cfat")
            if spec is not None and (d := execute(spec)) is not None:
                attacked.append((policy, timing, seed, "cfat", d))
    report(benign, attacked, args)


def report(benign: dict[int, Path], attacked: list, args: argparse.Namespace) -> None:
    print("\n=== gate_eval: MNIST conv-small, L_adv = L_crt = 0.1, N_cert 1000, N_val 5000 ===")
    benign_judged, benign_final = {}, {}
    mismatches = 0
    for seed, d in benign.items():
        judged, final, bad = replay(d)
        benign_judged[seed], benign_final[seed] = judged, final
        mismatches += bad
    print("\n-- false rejections of benign rounds (after each rule's warm-up; all rounds) --")
    print(f"{'seed':>4} {'rounds':>6} | {'calibrated':>22} | {'cfat (shadow)':>22}")
    for seed, judged in benign_judged.items():
        cells = []
        for rule in RULES:
            after = [j.round for j in judged if not j.warmup[rule] and not j.accepted[rule]]
            every = [j.round for j in judged if not j.accepted[rule]]
            cells.append(f"{len(after)} ({len(every)} all) {after[:6]}")
        print(f"{seed:>4} {len(judged):>6} | {cells[0]:>22} | {cells[1]:>22}")

    print("\n-- attack rounds blocked / attack rounds, per policy and timing --")
    print(f"{'policy':<14} {'timing':<6} {'enforced':<10} | {'calibrated':>10} {'cfat':>10} "
          f"| runs")  # fmt: skip
    table = defaultdict(lambda: {r: [0, 0] for r in RULES})
    runs_of = defaultdict(int)
    attack_judged: dict[tuple[str, str], list[Judged]] = defaultdict(list)
    finals = []
    for policy, timing, seed, enforce, d in attacked:
        continued = timing == "late" and policy != "adaptive-cert"
        judged, _, bad = replay(d, benign_final.get(seed) if continued else None)
        mismatches += bad
        rounds = attack_rounds(d, policy)
        key = (policy, timing, enforce)
        runs_of[key] += 1
        for j in judged:
            if j.round in rounds:
                attack_judged[(policy, timing)].append(j)
                for rule in RULES:
                    table[key][rule][0] += not j.accepted[rule]
                    table[key][rule][1] += 1
        end = read_rounds(d / "rounds.jsonl")[-1]["metrics"].get("pgd_t_acc", math.nan)
        kept = sum(j.accepted[enforce] for j in judged)
        finals.append((policy, timing, seed, enforce, end, f"{len(rounds)}/{kept}/{len(judged)}"))
    for (policy, timing, enforce), cells in sorted(table.items()):
        shown = [f"{b}/{n}" for b, n in (cells[r] for r in RULES)]
        label = "shadow" if enforce == "calibrated" else "enforced"
        print(f"{policy:<14} {timing:<6} {enforce:<10} | {shown[0]:>10} {shown[1]:>10} "
              f"| {runs_of[(policy, timing, enforce)]} (cfat {label})")  # fmt: skip

    names = metric_names(RunConfig.from_flat({"gate.l-crt": "0.1"}).gate)
    for rule in RULES:
        print(f"\n-- {rule}: per metric, badness vs the rule's reference (loss/ref, ref/acc) --")
        print("   largest benign (after warm-up) | smallest per attack (policy/timing)")
        for m in names:
            benign_max = max(
                (badness(m, j.metrics[m], j.references[rule][m])
                 for js in benign_judged.values() for j in js
                 if not j.warmup[rule] and m in j.references[rule]),
                default=math.nan,
            )  # fmt: skip
            mins = []
            for (policy, timing), js in sorted(attack_judged.items()):
                vals = [
                    badness(m, j.metrics[m], j.references[rule][m])
                    for j in js
                    if m in j.references[rule] and not math.isnan(j.metrics[m])
                ]
                if vals:
                    mins.append(f"{policy[:8]}/{timing[0]} {fmt(min(vals))}")
            print(f"   {m:<14} {fmt(benign_max):>8} | " + ", ".join(mins))

    print("\n-- PGD accuracy at T (central test subset) at the end of each attacked run --")
    ref_end = {
        seed: (
            statistics.mean(j.pgd_t_acc for j in js[args.attack_rounds - 1 : args.attack_rounds]),
            js[-1].pgd_t_acc,
        )
        for seed, js in benign_judged.items()
        if js
    }  # fmt: skip
    print("   (benign: the benign run of the seed after as many rounds, or at its end for late;")
    print("    rounds: attacked / accepted / all rounds of the attacked run)")
    print(f"{'policy':<14} {'timing':<6} {'seed':>4} {'enforced':<10} {'attacked':>8} "
          f"{'benign':>7} {'rounds':>9}")  # fmt: skip
    for policy, timing, seed, enforce, end, n in sorted(finals):
        base = ref_end.get(seed, (math.nan, math.nan))[0 if timing == "early" else 1]
        print(f"{policy:<14} {timing:<6} {seed:>4} {enforce:<10} {fmt(end):>8} {fmt(base):>7} "
              f"{n:>9}")  # fmt: skip
    print(f"\nreplayed verdicts of the enforced rule differing from the recorded: {mismatches}")


if __name__ == "__main__":
    main()
