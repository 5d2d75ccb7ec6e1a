"""Train conv-small with PGD on the MNIST pool, then certify it as CFAT Table 1 does.

Run by hand (about 10 minutes of CPU by default):

    CERTFL_CACHE=/tmp/certfl-cache .venv/bin/python bench/certify_pgd_model.py \
        --data-dir ../shared/data --minutes 10

Madry PGD training at L_adv = 0.25 (CFAT's MNIST setting; the radius ramps up over the first
rounds from clean training, as is usual for small networks) on random draws from the pool until
the time budget is spent. The checkpoint is written in the format the server writes,
torch.save({"model", "state_dict", "config"}), and is then certified on the certification set
(the first 1000 training points) at L_crt = 0.1, 0.15, 0.25 with the zonotope domain. CFAT
Table 1 reports 91.4 / 33.4 / 0.0 certified accuracy and 0.15 / 2.72 / 32.96 certified loss
for its own PGD-trained network.
"""

from __future__ import annotations

import argparse
import functools
import time
from pathlib import Path

import torch

from attacks.registry import load_policies
from certify import certify_dataset
from core.config import RunConfig
from core.data import load_splits
from core.evasion import PGDConfig, pgd
from core.models import build_model
from core.training import SGDConfig, evaluate, train


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data-dir", default="", help="MNIST location (default: $CERTFL_DATA)")
    p.add_argument("--minutes", type=float, default=10.0, help="training time budget")
    p.add_argument("--adv-eps", type=float, default=0.25)
    p.add_argument("--adv-steps", type=int, default=7)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench/results/pgd-conv-small.pt")
    p.add_argument("--eps", default="0.1,0.15,0.25", help="certification radii")
    args = p.parse_args()

    load_policies()
    cfg = RunConfig.from_flat(
        {
            "seed": args.seed,
            "data.dir": args.data_dir,
            "model.name": "conv-small",
            "train.adv-eps": args.adv_eps,
            "train.adv-steps": args.adv_steps,
            "train.batch-size": args.batch_size,
            "train.lr": args.lr,
            "train.momentum": 0.9,
        }
    )
    splits = load_splits(cfg.data)
    torch.manual_seed(args.seed)
    model = build_model("conv-small", splits.spec, seed=args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    sgd = SGDConfig(epochs=1, batch_size=args.batch_size, lr=args.lr, momentum=0.9)
    budget, start, trained, rounds = args.minutes * 60, time.perf_counter(), 0, 0
    while (elapsed := time.perf_counter() - start) < budget:
        # About six rounds of budget / 6 each; the first is short, clean, and measures the speed.
        # The radius then ramps up: 1/3 and 2/3 of L_adv, then L_adv.
        eps = args.adv_eps * min(1.0, rounds / 3)
        per_point = elapsed / max(trained, 1)
        n = 2000 if rounds == 0 else int(min(budget / 6, budget - elapsed) / per_point)
        if n < args.batch_size:
            break
        subset = splits.pool.subset(torch.randperm(len(splits.pool), generator=gen)[:n])
        attack = functools.partial(pgd, cfg=PGDConfig(eps=eps, steps=args.adv_steps))
        stats = train(model, subset, sgd, gen, perturb=attack)
        rounds, trained = rounds + 1, trained + len(subset)
        print(f"round {rounds}: eps {eps:.3f}, {len(subset)} points, loss {stats.mean_loss:.3f}, "
              f"{stats.seconds:.0f} s", flush=True)  # fmt: skip
    model.eval()
    val = splits.val.subset(slice(0, 1000))
    clean = evaluate(model, val)
    attack = functools.partial(pgd, cfg=PGDConfig(eps=args.adv_eps, steps=20))
    adv = evaluate(model, val, perturb=attack)
    print(f"validation (1000 points): clean {100 * clean.accuracy:.2f}%, "
          f"PGD-20 at {args.adv_eps}: {100 * adv.accuracy:.2f}%")  # fmt: skip

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {"model": "conv-small", "state_dict": model.state_dict(), "config": cfg.to_flat()}, out
    )
    print(f"checkpoint: {out}")

    x, y = splits.cert.tensors()
    print(f"certification set: {len(y)} points (the first training points)")
    print("| L_crt | certified acc (%) | certified loss | seconds |")
    print("|---|---|---|---|")
    for eps in (float(e) for e in args.eps.split(",")):
        t = time.perf_counter()
        r = certify_dataset(model, x, y, eps)
        print(f"| {eps} | {100 * r.certified_accuracy:.1f} | {float(r.certified_loss):.3f} | "
              f"{time.perf_counter() - t:.1f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
