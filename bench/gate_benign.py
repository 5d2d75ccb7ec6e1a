"""False rejections of the certification gate over benign rounds, and its cost (run by hand).

    .venv/bin/python bench/gate_benign.py --rounds 30 --warmup 5

A real `flwr run` simulation of MNIST PGD adversarial training with no attacker and the gate on
(N_cert and N_val as configured, CFAT's defaults 1000 and 5000). Every skip after the warm-up is
a false rejection. Prints per round the gate's time beside the round's training time, and the
gate's share of the round.
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

from cli.simulation import run_simulation  # noqa: E402
from server.run_store import read_rounds  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--n-cert", type=int, default=1000)
    parser.add_argument("--n-val", type=int, default=5000)
    parser.add_argument("--extra", default="", help="more run-config overrides")
    parser.add_argument("--data-dir", default=os.environ.get("CERTFL_DATA", "../shared/data"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = (
            f"data.dir='{Path(args.data_dir).resolve()}' output-dir='{tmp}/runs' run-name='b' "
            f"num-rounds={args.rounds} data.n-cert={args.n_cert} data.n-val={args.n_val} "
            f"gate.enabled=true gate.warmup-rounds={args.warmup} roles.malicious-fraction=0.0 "
            f"{args.extra}"
        )
        proc = run_simulation(REPO, config, args.clients, Path(tmp) / "flwr-home")
        path = Path(tmp) / "runs" / "b" / "rounds.jsonl"
        if proc.returncode or not path.is_file():
            sys.exit(proc.stdout[-3000:])
        rounds = read_rounds(path)[1:]
    print(f"{'round':>5} {'verdict':>8} {'train s':>8} {'gate s':>7} {'gate/round':>10}  failed")
    for r in rounds:
        t, gate = r["timings"], r["gate"] or {}
        verdict = "accept" if r["aggregated"] else "SKIP"
        share = t["gate_s"] / t["round_s"] if t["round_s"] else 0.0
        failed = ", ".join(gate.get("failed", [])) or r["skip_reason"]
        print(f"{r['round']:>5} {verdict:>8} {t['train_s']:>8.1f} {t['gate_s']:>7.1f} "
              f"{share:>10.0%}  {failed}")  # fmt: skip
    after = [r for r in rounds if r["round"] > args.warmup]
    false = [r["round"] for r in after if not r["aggregated"]]
    print(f"false rejections after warm-up: {len(false)} of {len(after)} rounds {false}")
    print(f"median gate time {statistics.median(r['timings']['gate_s'] for r in rounds):.1f}s, "
          f"median training time {statistics.median(r['timings']['train_s'] for r in rounds):.1f}s "
          f"(N_cert={args.n_cert}, N_val={args.n_val})")  # fmt: skip
    final = rounds[-1]["metrics"]
    print(f"final global model: clean {final['clean_acc']:.3f}, PGD {final['pgd_acc']:.3f}")


if __name__ == "__main__":
    main()
