"""Where the certifier's time goes, layer by layer, against a baseline run in the same invocation
(by hand; hold the machine's lock, these are timings).

    flock /tmp/certfl-heavy.lock .venv/bin/python bench/certify_layers.py --dataset mnist \
        [--against main] [--checkpoint RUN/final.pt] [--n 192] [--threads 1]

The model is an early-round one unless --checkpoint is given: the run's architecture briefly
PGD-trained here (most ReLUs still cross at the gate's radius, the certifier's worst case).
Workers, each a subprocess with `--threads` torch threads, certify the first N certification
points chunk by chunk as the gate's workers do (their own tree's chunk size) and time every layer:

* `this`: the working tree as it is;
* `this, default malloc`: the same without `certify.allocator.retain_freed_memory`;
* `REV` (with --against): the same script's worker run on a temporary `git worktree` of REV,
  i.e. the certifier before a change (with its own allocator settings, where it has them).

Workers alternate for --reps rounds and the fastest round of each is kept. The script prints ms
per point per layer, the total's ratio to the first baseline, and the largest difference of the
margins between workers (the same zonotope must give the same bounds up to float rounding).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SETUPS = {  # the gate's model and radius per dataset (bench/gate_cost.py's setups)
    "mnist": ("conv-small", 0.1),
    "cifar10": ("cifar-cnn", 8 / 255),
}


def worker(payload_path: str, out_path: str) -> None:
    """Time every layer on the tree first on sys.path (only APIs every revision has)."""
    import torch

    payload = torch.load(payload_path, weights_only=False)
    torch.set_num_threads(payload["threads"])
    if payload["retain"]:
        try:  # a revision from before the allocator module runs with glibc's defaults
            from certify.allocator import retain_freed_memory
        except ImportError:
            pass
        else:
            retain_freed_memory()
    from certify.analysis import linf_region
    from certify.domains import Zonotope
    from certify.metrics import chunk_size
    from certify.trace import trace
    from core.models import build_model
    from strategies.gate_measure import SINGLE_THREAD_CHUNK_BYTES

    model = build_model(payload["model"], payload["spec"])
    model.load_state_dict(payload["state_dict"])
    model.eval()
    x, y, eps = payload["x"], payload["y"], payload["eps"]
    steps = trace(model)
    single = {"cpu_bytes": SINGLE_THREAD_CHUNK_BYTES, "cpu_min": 1}
    chunk = chunk_size(
        steps, x, eps, "zonotope", 256 * 2**20, **(single if payload["threads"] == 1 else {})
    )
    chunk = min(chunk, math.ceil(1000 / 8))  # the gate's slices (N_cert 1000)
    chunk = payload["chunk"] or chunk
    seconds: dict[str, float] = {}
    margins = []
    with torch.no_grad():
        for start in range(0, x.shape[0], chunk):
            xc, yc = x[start : start + chunk], y[start : start + chunk]
            state = Zonotope.from_box(*linf_region(xc, eps))
            for i, step in enumerate(steps):
                t = time.perf_counter()
                state = step.transformer.apply(step.module, state)
                key = f"{i}:{type(step.module).__name__}"
                seconds[key] = seconds.get(key, 0.0) + time.perf_counter() - t
            t = time.perf_counter()
            margins.append(state.margin_upper(yc))
            seconds["margins"] = seconds.get("margins", 0.0) + time.perf_counter() - t
    torch.save({"seconds": seconds, "chunk": chunk, "margins": torch.cat(margins)}, out_path)


def _early_model(dataset: str, name: str, eps: float, points: int):
    """The run's architecture after one short epoch of PGD training (3 steps) on the pool."""
    import torch

    from core.config import RunConfig
    from core.data import load_splits
    from core.evasion import PGDConfig, pgd
    from core.models import build_model
    from core.training import SGDConfig, train

    cfg = RunConfig.from_flat({"data.dataset": dataset, "model.name": name, "data.n-cert": 1000})
    splits = load_splits(cfg.data)
    torch.manual_seed(0)
    model = build_model(name, splits.spec, seed=0)
    generator = torch.Generator().manual_seed(0)
    attack = PGDConfig(eps=eps, steps=3)
    sgd = SGDConfig(epochs=1, batch_size=32, lr=0.05, momentum=0.9)
    pool = splits.pool.subset(slice(0, points))
    train(model, pool, sgd, generator, perturb=lambda m, x, y: pgd(m, x, y, attack, generator))
    return model, splits


def main() -> None:
    from attacks.registry import load_policies

    load_policies()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dataset", choices=sorted(SETUPS), default="mnist")
    p.add_argument("--checkpoint", default="", help="a run's final.pt instead of the early model")
    p.add_argument("--n", type=int, default=0, help="points (default 192 MNIST, 8 CIFAR-10)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--chunk", type=int, default=0, help="points per chunk (default: the gate's)")
    p.add_argument("--train-points", type=int, default=1500)
    p.add_argument("--against", default="", help="a git revision to compare with")
    p.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    import torch

    from core.config import RunConfig
    from core.data import load_splits
    from core.models import build_model

    name, eps = SETUPS[args.dataset]
    n = args.n or (192 if args.dataset == "mnist" else 8)
    torch.set_num_threads(args.threads)
    if args.checkpoint:
        cfg = RunConfig.from_flat(
            {"data.dataset": args.dataset, "model.name": name, "data.n-cert": 1000}
        )
        splits = load_splits(cfg.data)
        model = build_model(name, splits.spec)
        model.load_state_dict(torch.load(args.checkpoint, weights_only=True)["state_dict"])
        what = args.checkpoint
    else:
        model, splits = _early_model(args.dataset, name, eps, args.train_points)
        what = f"early model ({args.train_points} points of PGD training)"
    x, y = splits.cert.tensors()
    with tempfile.TemporaryDirectory() as tmp:
        payload = {
            "threads": args.threads, "chunk": args.chunk, "model": name, "eps": eps,
            "spec": splits.spec, "state_dict": model.state_dict(), "x": x[:n], "y": y[:n],
        }  # fmt: skip
        trees = {"this": (REPO, True), "this, default malloc": (REPO, False)}
        if args.against:
            base = Path(tmp) / "baseline"
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(base),
                            args.against], check=True)  # fmt: skip
            trees = {args.against: (base, True), **trees}
        results: dict[str, dict] = {}
        try:
            for _ in range(args.reps):
                for label, (tree, retain) in trees.items():
                    path = Path(tmp) / "payload.pt"
                    torch.save({**payload, "retain": retain}, path)
                    out = Path(tmp) / "out.pt"
                    env = {**os.environ, "PYTHONPATH": str(tree)}
                    subprocess.run([sys.executable, __file__, "--worker", str(path), str(out)],
                                   check=True, env=env, cwd=tree)  # fmt: skip
                    got = torch.load(out, weights_only=False)
                    best = results.get(label)
                    if best is None or sum(got["seconds"].values()) < sum(best["seconds"].values()):
                        results[label] = got
        finally:
            if args.against:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(base)])
    _report(results, what, args, n, eps)


def _report(
    results: dict[str, dict], what: str, args: argparse.Namespace, n: int, eps: float
) -> None:
    labels = list(results)
    layers = list(results[labels[0]]["seconds"])
    print(f"{args.dataset} {SETUPS[args.dataset][0]} at eps {eps:.4g}, {what}, {n} points, "
          f"{args.threads} thread(s), fastest of {args.reps}")  # fmt: skip
    print(f"{'ms per point':>18} " + " ".join(f"{label:>22}" for label in labels))
    for layer in [*layers, "total"]:
        row = []
        for label in labels:
            s = results[label]["seconds"]
            row.append(1000 * (sum(s.values()) if layer == "total" else s.get(layer, 0.0)) / n)
        print(f"{layer:>18} " + " ".join(f"{v:>22.2f}" for v in row))
    print(f"{'chunk':>18} " + " ".join(f"{results[label]['chunk']:>22d}" for label in labels))
    base = sum(results[labels[0]]["seconds"].values())
    for label in labels[1:]:
        print(f"{labels[0]} / {label}: {base / sum(results[label]['seconds'].values()):.2f}x")
    ref = results[labels[0]]["margins"]
    finite = ref.isfinite()
    for label in labels[1:]:
        other = results[label]["margins"]
        same = bool((other.isfinite() == finite).all())
        diff = float((other[finite] - ref[finite]).abs().max())
        print(f"margins {label} vs {labels[0]}: max abs diff {diff:.2e}, same -inf entries {same}")
    print(json.dumps({label: sum(r["seconds"].values()) / n for label, r in results.items()}))


if __name__ == "__main__":
    sys.path.insert(0, os.environ.get("PYTHONPATH", str(REPO)).split(os.pathsep)[0])
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3])
    else:
        sys.path.insert(0, str(REPO))
        main()
