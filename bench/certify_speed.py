"""Certification speed and agreement: our zonotope engine against IBM ART's DeepZ (by hand).

    CERTFL_CACHE=/tmp/certfl-cache .venv/bin/python bench/certify_speed.py \
        --data-dir ../shared/data --n 200 [--checkpoint bench/results/pgd-conv-small.pt]

The same conv-small (MNIST), the same first N training points and the same radii go through
both certifiers, each in its own worker process (peak memory is the worker's max RSS), and the
script prints seconds per input, peak memory, verdict agreement and the largest difference of
the bounds upper(z_q - z_pred). ART needs numpy < 2.4, so its worker runs in a separate
virtualenv (`--art-python`, default /tmp/venv-art/bin/python), made once with

    python -m venv /tmp/venv-art
    echo "$PWD/.venv/lib/python3.11/site-packages" \
        > /tmp/venv-art/lib/python3.11/site-packages/zz-main-venv.pth   # torch from .venv
    /tmp/venv-art/bin/pip install 'numpy<2.4' adversarial-robustness-toolbox

ART's PytorchDeepZ certifies against the predicted class, takes only Conv2d/Linear/ReLU
children, and infers the flatten itself, so its copy of the model folds our Normalize layer into
the first convolution and flattens in `forward`. Both sides run float32, so bounds agree to
rounding (about 1e-5 here), not bit for bit.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class ArtConvSmall(nn.Module):
    """conv-small with Normalize folded into conv1 and the layers as direct children (ART)."""

    def __init__(self, model: nn.Sequential) -> None:
        super().__init__()
        norm, conv1, _, conv2, _, _, fc1, _, fc2 = model
        self.conv1 = nn.Conv2d(1, 16, 4, stride=2)
        self.relu1 = nn.ReLU()
        self.conv2, self.relu2, self.fc1, self.relu3, self.fc2 = (
            conv2,
            nn.ReLU(),
            fc1,
            nn.ReLU(),
            fc2,
        )
        with torch.no_grad():  # conv1((x - m) / s) = (w / s) * x + b - sum(w) m / s
            scale = 1 / norm.std.flatten()[0]
            self.conv1.weight.copy_(conv1.weight * scale)
            self.conv1.bias.copy_(
                conv1.bias - conv1.weight.sum((1, 2, 3)) * norm.mean.flatten()[0] * scale
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        return self.fc2(self.relu3(self.fc1(x.flatten(1))))


def art_worker(payload: dict) -> dict:
    """Certify with ART's DeepZ; margins from its output zonotope, time from its certify()."""
    import numpy as np
    from art.estimators.certification.deep_z import PytorchDeepZ

    from core.models import build_model

    torch.set_num_threads(payload["threads"])
    model = build_model("conv-small", payload["spec"])
    model.load_state_dict(payload["state_dict"])
    art_model = ArtConvSmall(model.eval()).eval()
    zono = PytorchDeepZ(
        model=art_model,
        clip_values=(0, 1),
        loss=nn.CrossEntropyLoss(),
        input_shape=(1, 28, 28),
        nb_classes=10,
        device_type="cpu",
    )
    x = payload["x"].numpy()
    preds = payload["pred"].tolist()
    out = {"runs": [], "rss_start": _peak_rss_mib()}
    for eps in payload["eps"]:
        margins, verdicts, seconds = [], [], 0.0
        for sample, pred in zip(x, preds, strict=True):
            start = time.perf_counter()
            cent, terms = zono.pre_process(cent=np.copy(sample), eps=np.eye(784) * eps)
            cent = np.expand_dims(cent, axis=0)
            verdicts.append(bool(zono.certify(cent=cent, eps=terms, prediction=pred)))
            seconds += time.perf_counter() - start
            with torch.no_grad():
                center, generators = zono.model.forward(eps=terms, cent=cent)
            diff_c = center - center[pred]
            margin = diff_c + (generators - generators[:, pred : pred + 1]).abs().sum(0)
            margin[pred] = float("-inf")
            margins.append(margin)
        out["runs"].append(
            {"eps": eps, "seconds": seconds, "certified": verdicts, "margins": torch.stack(margins)}
        )
    out["rss_peak"] = _peak_rss_mib()
    return out


def ours_worker(payload: dict) -> dict:
    """Certify with certify.certify_dataset (zonotope, float32) against the predicted class."""
    from certify import certify_dataset
    from core.models import build_model

    torch.set_num_threads(payload["threads"])
    model = build_model("conv-small", payload["spec"])
    model.load_state_dict(payload["state_dict"])
    model.eval()
    x, pred = payload["x"], payload["pred"]
    certify_dataset(model, x[:8], pred[:8], 0.1)  # warm-up: allocator, thread pool
    out = {"runs": [], "rss_start": _peak_rss_mib()}
    for eps in payload["eps"]:
        start = time.perf_counter()
        r = certify_dataset(model, x, pred, eps, budget_bytes=payload["budget"])
        seconds = time.perf_counter() - start
        out["runs"].append(
            {
                "eps": eps,
                "seconds": seconds,
                "certified": r.certified.tolist(),
                "margins": r.margins,
            }
        )
    out["rss_peak"] = _peak_rss_mib()
    return out


def _run_worker(python: str, kind: str, payload_path: Path) -> dict:
    result_path = payload_path.with_suffix(f".{kind}.pt")
    cmd = [python, __file__, "--worker", kind, str(payload_path), str(result_path)]
    subprocess.run(cmd, check=True, cwd=REPO)
    return torch.load(result_path, weights_only=False)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data-dir", default="", help="MNIST location (default: $CERTFL_DATA)")
    p.add_argument("--checkpoint", default="", help="a certfl checkpoint of conv-small")
    p.add_argument("--n", type=int, default=200, help="inputs (the first training points)")
    p.add_argument("--eps", default="0.02,0.05,0.1")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--budget-mib", type=int, default=256)
    p.add_argument("--art-python", default="/tmp/venv-art/bin/python")
    p.add_argument("--skip-art", action="store_true")
    p.add_argument("--json", default="", help="also write the table as JSON here")
    args = p.parse_args()

    from core.config import DataConfig
    from core.data import load_splits
    from core.models import build_model

    splits = load_splits(DataConfig(dir=args.data_dir))
    model = build_model("conv-small", splits.spec, seed=0)
    if args.checkpoint:
        model.load_state_dict(torch.load(args.checkpoint, weights_only=False)["state_dict"])
    model.eval()
    x, _ = splits.cert.subset(slice(0, args.n)).tensors()
    with torch.no_grad():
        pred = model(x).argmax(1)
    eps = [float(e) for e in args.eps.split(",")]
    payload = {
        "spec": splits.spec,
        "state_dict": model.state_dict(),
        "x": x,
        "pred": pred,
        "eps": eps,
        "threads": args.threads,
        "budget": args.budget_mib * 2**20,
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "payload.pt"
        torch.save(payload, path)
        ours = _run_worker(sys.executable, "ours", path)
        art = None if args.skip_art else _run_worker(args.art_python, "art", path)

    what = "checkpoint " + args.checkpoint if args.checkpoint else "random init (seed 0)"
    print(f"conv-small, {what}; {args.n} MNIST inputs; {args.threads} torch threads")
    print("| eps | ours ms/input | ART ms/input | speed-up | certified ours / ART | "
          "verdicts agree | max bound diff |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    rows = []
    for i, e in enumerate(eps):
        o = ours["runs"][i]
        row = {
            "eps": e,
            "ours_ms": 1000 * o["seconds"] / args.n,
            "ours_certified": sum(o["certified"]),
        }
        if art is not None:
            art_run = art["runs"][i]
            finite = torch.isfinite(o["margins"])
            art_margins = art_run["margins"].to(o["margins"].dtype)
            diff = (o["margins"][finite] - art_margins[finite]).abs().max()
            row |= {
                "art_ms": 1000 * art_run["seconds"] / args.n,
                "art_certified": sum(art_run["certified"]),
                "agree": sum(
                    p == q for p, q in zip(o["certified"], art_run["certified"], strict=True)
                ),
                "max_bound_diff": float(diff),
            }
            speedup = row["art_ms"] / row["ours_ms"]
            print(f"| {e} | {row['ours_ms']:.2f} | {row['art_ms']:.2f} | {speedup:.1f}x | "
                  f"{row['ours_certified']} / {row['art_certified']} | {row['agree']}/{args.n} | "
                  f"{row['max_bound_diff']:.1e} |")  # fmt: skip
        else:
            print(f"| {e} | {row['ours_ms']:.2f} | - | - | {row['ours_certified']} | - | - |")
        rows.append(row)
    mem = f"peak RSS: ours {ours['rss_peak']:.0f} MiB (start {ours['rss_start']:.0f})"
    if art is not None:
        mem += f", ART {art['rss_peak']:.0f} MiB (start {art['rss_start']:.0f})"
    print(mem)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "memory": mem}, indent=2))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--worker":
        sys.path.insert(0, str(REPO))
        worker = {"art": art_worker, "ours": ours_worker}[sys.argv[2]]
        torch.save(worker(torch.load(sys.argv[3], weights_only=False)), sys.argv[4])
        raise SystemExit(0)
    raise SystemExit(main())
