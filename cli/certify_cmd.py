"""`certfl certify`: certified accuracy and certified loss of a checkpoint at several radii.

The checkpoint is a file written by `torch.save({"model": name, "state_dict": ..., "config":
flat_run_config})`, as the server writes accepted models. Its run config (overridden key by key
by `--config`, a flat JSON file) chooses the data exactly as the run did: the certification set
is `load_splits(cfg.data).cert`, the first N_cert training points.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from attacks.registry import load_policies
from certify import DEFAULT_BUDGET_BYTES, certify_dataset
from core.config import RunConfig, parse_float_list
from core.data import load_splits
from core.device import resolve_device
from core.models import build_model


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `certfl certify`."""
    p = subparsers.add_parser(
        "certify", help="certified accuracy and loss of a checkpoint (zonotope or interval)"
    )
    p.add_argument("checkpoint", help="a .pt file holding model, state_dict and config")
    p.add_argument("--eps", default="0.1,0.15,0.25", help="comma-separated L-inf radii")
    p.add_argument("--n", type=int, default=0, help="first N certification points (0: all)")
    p.add_argument("--config", default="", help="flat run config JSON overriding the checkpoint's")
    p.add_argument("--data-dir", default="", help="overrides data.dir")
    p.add_argument("--method", choices=["zonotope", "interval"], default="zonotope")
    p.add_argument("--sound-fp", action="store_true", help="account for float32 rounding")
    p.add_argument("--budget-mib", type=int, default=DEFAULT_BUDGET_BYTES // 2**20)
    p.add_argument("--device", default="", help="cpu | cuda (default: the config's device)")
    p.add_argument("--json", default="", help="also write the results to this JSON file")


def load_checkpoint(
    path: str | Path, overrides: dict[str, Any]
) -> tuple[RunConfig, dict[str, Any]]:
    """The run config (the checkpoint's, updated by `overrides`) and the checkpoint itself."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    missing = {"model", "state_dict", "config"} - set(ckpt)
    if missing:
        raise SystemExit(f"{path}: not a certfl checkpoint, missing {sorted(missing)}")
    load_policies()  # the run config names the policies' `attack.*` keys
    cfg = RunConfig.from_flat({**ckpt["config"], **overrides})
    return cfg, ckpt


def _progress_bar() -> Progress:
    """A progress bar on stderr (rich), so that stdout keeps only the table."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    return Progress(*columns, TimeElapsedColumn(), console=Console(stderr=True))


def run(args: argparse.Namespace) -> int:
    """Certify the checkpoint at every radius; print a table, optionally write JSON."""
    overrides = json.loads(Path(args.config).read_text()) if args.config else {}
    if args.data_dir:
        overrides["data.dir"] = args.data_dir
    cfg, ckpt = load_checkpoint(args.checkpoint, overrides)
    splits = load_splits(cfg.data)
    model = build_model(ckpt["model"], splits.spec)
    model.load_state_dict(ckpt["state_dict"])
    device = resolve_device(args.device or cfg.device)
    model.to(device).eval()
    cert = splits.cert if args.n <= 0 else splits.cert.subset(slice(0, args.n))
    x, y = cert.tensors(device)
    rows = []
    print(f"{args.checkpoint}: {ckpt['model']}, {len(y)} certification points, {args.method}")
    print("| eps | certified acc (%) | certified loss | clean acc (%) | seconds |")
    print("|---|---|---|---|---|")
    for eps in parse_float_list(args.eps):
        start = time.perf_counter()
        with _progress_bar() as bar:
            task = bar.add_task(f"eps {eps}", total=len(y))
            r = certify_dataset(
                model,
                x,
                y,
                eps,
                args.method,
                budget_bytes=args.budget_mib * 2**20,
                sound_fp=args.sound_fp,
                progress=lambda done, _total, task=task: bar.update(task, completed=done),
            )
        seconds = time.perf_counter() - start
        row = {
            "eps": eps,
            "certified_accuracy": r.certified_accuracy,
            "certified_loss": float(r.certified_loss),
            "clean_accuracy": float(r.correct.float().mean()),
            "seconds": seconds,
        }
        rows.append(row)
        print(f"| {eps} | {100 * row['certified_accuracy']:.1f} | {row['certified_loss']:.4g} | "
              f"{100 * row['clean_accuracy']:.1f} | {seconds:.1f} |")  # fmt: skip
    if args.json:
        meta = {"checkpoint": str(args.checkpoint), "model": ckpt["model"], "n": len(y)}
        meta |= {"method": args.method, "sound_fp": args.sound_fp}
        Path(args.json).write_text(json.dumps({**meta, "results": rows}, indent=2))
    return 0
