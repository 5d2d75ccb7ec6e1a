"""Central evaluation of the global model: clean and PGD accuracy on a fixed test subset, and
optionally its certified accuracy and loss, so that runs without the gate can be compared."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from flwr.app import ArrayRecord
from torch import nn

from certify.metrics import certification_metrics
from core.config import RunConfig
from core.data import ImageSet, test_order
from core.evasion import PGDConfig, pgd_evaluate
from core.params import load_record
from core.seeds import torch_generator
from core.training import evaluate
from server.threat_metrics import THREAT_METRICS


def eval_subset(test: ImageSet, n_test: int, seed: int) -> ImageSet:
    """A fixed, seeded subset of `n_test` test points (0: the whole test set)."""
    if n_test == 0 or n_test >= len(test):
        return test
    order = test_order(len(test), seed)
    return test.subset(order[:n_test].sort().values)


@dataclass
class CentralEvaluator:
    """Loads a global model into `model` and measures it on `data`."""

    model: nn.Module
    data: ImageSet
    cfg: RunConfig
    device: torch.device

    def __call__(self, arrays: ArrayRecord, server_round: int) -> dict[str, float]:
        """clean_acc, clean_loss, pgd_acc, pgd_loss of the model `arrays` hold, plus the
        certified metrics at `eval.l-crt` and the attack-exposing metrics that apply."""
        load_record(self.model, arrays)
        e = self.cfg.eval
        clean = evaluate(self.model, self.data, e.batch_size, device=self.device)
        metrics = {"clean_acc": clean.accuracy, "clean_loss": clean.loss, "n_test": clean.n}
        if e.adv_steps > 0 and e.adv_eps > 0:
            generator = torch_generator(self.cfg.seed, "eval-pgd", server_round)
            attack = PGDConfig(eps=e.adv_eps, steps=e.adv_steps)
            adv = pgd_evaluate(self.model, self.data, attack, e.batch_size, generator, self.device)
            metrics |= {"pgd_acc": adv.accuracy, "pgd_loss": adv.loss, "adv_eps": e.adv_eps}
            if e.temperature > 0:
                bypass = replace(attack, temperature=e.temperature)
                adv_t = pgd_evaluate(
                    self.model, self.data, bypass, e.batch_size, generator, self.device
                )
                metrics |= {"pgd_t_acc": adv_t.accuracy, "pgd_temperature": e.temperature}
        if e.l_crt:
            x, y = self.data.subset(slice(0, e.n_cert)).tensors(self.device)
            metrics |= certification_metrics(self.model, x, y, e.l_crt)
        for threat_metric in THREAT_METRICS:
            metrics |= threat_metric(self.model, self.data, self.cfg, self.device, server_round)
        return metrics
