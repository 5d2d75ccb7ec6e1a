"""Where the gate's time goes, and the gate's time per round next to the round's training time,
before (`gate.scheduler=serial`: one pass per check on torch's threads, as the gate first ran)
and after (`pool`: single-threaded workers, early verdicts), in one invocation (run by hand;
hold the machine's lock, these are timings).

    flock /tmp/certfl-heavy.lock .venv/bin/python bench/gate_cost.py --dataset mnist
    flock /tmp/certfl-heavy.lock .venv/bin/python bench/gate_cost.py --dataset cifar10

Each scheduler runs one real `flwr run` simulation (no attacker, the calibrated rule) of
--rounds rounds: MNIST conv-small with N_cert 1000 and N_val 5000 (CFAT's), or CIFAR-10
cifar-cnn with N_cert 100 and N_val 5000 at CFAT's CIFAR radii, L_adv = L_crt = 8/255
(10 clients, 5 per round; `--extra "train.adv-eps=0.1 gate.l-crt='0.1'"` for MNIST's radius).
Per round it prints the training time (sending the model to having every reply), the gate's
time (without the one-off measurement of the initial model, shown apart), the busy seconds of
each check, and what the early verdict saved.

With --direct (for slow setups: `--schedulers pool --direct`), the last simulation's final model
is then measured in this process by each path in turn, the same candidate for all: serial
(before), pool measuring in full, and pool with an early verdict against the calibrated rule's
bounds for a run whose recent models all measured like this one.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from attacks.registry import load_policies  # noqa: E402
from cli.simulation import run_simulation  # noqa: E402
from server.run_store import read_rounds  # noqa: E402

SETUPS = {
    "mnist": "data.dataset='mnist' model.name='conv-small' data.n-cert=1000 data.n-val=5000",
    # CFAT Sec. 5 on CIFAR-10: L_adv = 8/255, and 8/255 the largest L_crt it certifies at
    "cifar10": "data.dataset='cifar10' model.name='cifar-cnn' data.n-cert=100 data.n-val=5000 "
    "train.adv-eps=0.0313725 gate.l-crt='0.0313725'",
}
CLIENTS = {"mnist": 20, "cifar10": 10}


def main() -> None:
    load_policies()  # the policies' `attack.*` keys, before any run config is parsed
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dataset", choices=sorted(SETUPS), default="mnist")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--schedulers", default="serial,pool")
    p.add_argument("--extra", default="", help="more run-config overrides")
    p.add_argument("--direct", action="store_true", help="also time each path on one model")
    p.add_argument("--direct-paths", default="serial,pool-full,pool-early")
    p.add_argument("--data-dir", default=os.environ.get("CERTFL_DATA", "../shared/data"))
    args = p.parse_args()
    rows = {}
    direct = {}
    with tempfile.TemporaryDirectory() as tmp:
        for scheduler in args.schedulers.split(","):
            config = (
                f"data.dir='{Path(args.data_dir).resolve()}' output-dir='{tmp}/runs' "
                f"run-name='{scheduler}' num-rounds={args.rounds} roles.malicious-fraction=0.0 "
                f"gate.enabled=true gate.scheduler='{scheduler}' {SETUPS[args.dataset]} "
                f"{args.extra}"
            )
            home = Path(tmp) / f"home-{scheduler}"
            proc = run_simulation(REPO, config, CLIENTS[args.dataset], home, timeout=7200)
            path = Path(tmp) / "runs" / scheduler / "rounds.jsonl"
            if proc.returncode or not path.is_file():
                sys.exit(proc.stdout[-3000:])
            rows[scheduler] = read_rounds(path)[1:]
        if args.direct:
            direct = time_paths(path.parent, args.data_dir, args.direct_paths.split(","))
    print(f"{args.dataset}: {SETUPS[args.dataset]}, {CLIENTS[args.dataset]} clients, 5 per round")
    print(f"{'scheduler':>9} {'round':>5} {'train s':>8} {'gate s':>7} {'gate/train':>10} "
          f"{'initial s':>9}  busy seconds per check; early verdict")  # fmt: skip
    summary = {}
    for scheduler, rounds in rows.items():
        ratios = []
        for r in rounds:
            gate = r["gate"]
            initial = gate["timings"].get("initial", 0.0)
            gate_s = r["timings"]["gate_s"] - initial
            train_s = r["timings"]["train_s"]
            ratios.append((gate_s, train_s))
            busy = ", ".join(
                f"{k} {v:.1f}" for k, v in gate["timings"].items() if k not in ("wall", "initial")
            )
            print(f"{scheduler:>9} {r['round']:>5} {train_s:>8.1f} {gate_s:>7.1f} "
                  f"{gate_s / train_s:>10.2f} {initial:>9.1f}  {busy}; "
                  f"{gate['early'] or 'measured in full'}")  # fmt: skip
        summary[scheduler] = (
            statistics.median(gate_s for gate_s, _ in ratios),
            statistics.median(train_s for _, train_s in ratios),
        )
    for scheduler, (gate_s, train_s) in summary.items():
        print(f"median {scheduler}: gate {gate_s:.1f}s, training {train_s:.1f}s, "
              f"gate/training {gate_s / train_s:.2f}")  # fmt: skip
    if {"serial", "pool"} <= summary.keys():
        print(f"pool vs serial gate time: {summary['serial'][0] / summary['pool'][0]:.1f}x faster")
    train_s = statistics.median(t for _, t in summary.values()) if summary else float("nan")
    for path, (seconds, busy, early) in direct.items():
        print(f"direct, final model: {path:<11} {seconds:7.1f}s  gate/training "
              f"{seconds / train_s:5.2f}  ({busy}; {early or 'measured in full'})")  # fmt: skip


def time_paths(run_dir: Path, data_dir: str, paths: list[str]) -> dict[str, tuple[float, str, str]]:
    """Wall seconds of each measuring path on the run's final model (the same candidate)."""
    import json
    import time

    import torch

    from core.config import RunConfig
    from core.data import load_splits
    from core.gate_rule import GateState, Measurement, remember, rule_bounds, with_initial
    from core.models import build_model
    from core.params import model_to_record
    from server.run_store import load_checkpoint
    from strategies.gate_measure import CandidateMeasurer

    flat = json.loads((run_dir / "config.json").read_text()) | {"data.dir": data_dir}
    base = RunConfig.from_flat(flat)
    splits = load_splits(base.data)
    model = build_model(base.model.name, splits.spec)
    model.load_state_dict(load_checkpoint(run_dir / "final.pt")["state_dict"])
    arrays = model_to_record(model)
    out, bounds = {}, ()
    schedulers = {"serial": "serial", "pool-full": "pool", "pool-early": "pool"}
    if "pool-early" in paths and "pool-full" not in paths:
        paths = [*paths, "pool-full"]  # its metrics make the bounds of the early verdict
    for path in sorted(paths, key=list(schedulers).index):
        cfg = RunConfig.from_flat(flat | {"gate.scheduler": schedulers[path]})
        measure = CandidateMeasurer(
            build_model(base.model.name, splits.spec), splits.val, splits.cert, cfg,
            torch.device("cpu"),
        )  # fmt: skip
        if schedulers[path] == "pool":
            measure.start_workers()  # their start-up is once per run, not per candidate
        start = time.perf_counter()
        r = measure(arrays, 1, bounds if path == "pool-early" else ())
        seconds = time.perf_counter() - start
        busy = ", ".join(f"{k} {v:.1f}" for k, v in r.seconds.items() if k != "wall")
        out[path] = (seconds, busy, r.early)
        if path == "pool-full":  # a calm history of models measuring like this one
            state = with_initial(GateState(), Measurement.of(0, r.metrics))
            for i in range(1, cfg.gate.window + 1):
                state = remember(state, Measurement.of(i, r.metrics), cfg.gate.history)
            bounds = rule_bounds("calibrated", state, cfg.gate, cfg.gate.window + 1).bounds
    return out


if __name__ == "__main__":
    main()
