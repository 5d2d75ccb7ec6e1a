"""`aru-extract` (ARU-E, ARU Sec. 4.2): extract a non-robust model from the global one, replace.

In every round the coalition attacks, its members jointly fine-tune the extracted model, at
first a copy of the robust global model: each trains it on PGD points of its partition (the
`train.adv-*` budget) labelled with the model's own wrong prediction, which makes the model
forget its robustness (catastrophic forgetting). Unlike the paper they also train on the clean
points with their labels (`attack.extract-clean`): alone, the relabelled points cost most of
the clean accuracy (the paper reports a drop too, Table 1), which any gate would see. They then
average the results weighted by partition size (FedAvg among themselves). For the first E-1 of
these rounds (E = `attack.extract-rounds`) they reply as benign clients, so nothing shows; from
the E-th on they replace the global model with the extracted one (Eq. 5, gamma/N each) and keep
extracting. The model and the count of rounds live in the channel root (`Coalition.stash`):
colluders sampled later continue where earlier ones stopped.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from attacks.boosting import BoostParams
from attacks.collusion import Coalition
from attacks.registry import register
from attacks.replace import replacement_reply
from attacks.updates import global_vector, model_vector, vector_model
from core.adversarial_training import benign_train, madry_perturb
from core.config import RunConfig
from core.config_base import param
from core.job import LocalJob, LocalResult, sgd_config
from core.policy_params import PolicyParams
from core.training import BatchTransform, Perturb, train

_STASH = "aru-extract"


class AruExtractParams(PolicyParams):
    """`aru-extract`'s schedule and training (it also reads BoostParams)."""

    extract_rounds: int = param(
        50, "aru-extract: E, rounds of joint extraction before replacing (ARU Sec. 4.2: 50)", ge=1
    )
    extract_clean: bool = param(
        True,
        "aru-extract: also train on the clean points with their labels, keeps clean accuracy "
        "(false = the paper's)",
    )
    extract_epochs: int = param(
        0,
        "aru-extract: local epochs of each extraction round (0 -> train.local-epochs)",
        sentinel=0,
        ge=0,
    )

    @classmethod
    def resolve(cls, params: AruExtractParams, cfg: RunConfig) -> dict[str, Any]:
        """0 epochs: a benign client's."""
        return {"extract_epochs": cfg.train.local_epochs} if params.extract_epochs == 0 else {}


def wrong_labels(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per row the predicted class where it is wrong, else the most likely wrong class."""
    return logits.detach().scatter(1, y[:, None], float("-inf")).argmax(1)


def relabel_adversarial(perturb: Perturb, keep_clean: bool) -> BatchTransform:
    """ARU-E's batch: PGD points labelled with the model's wrong predictions (Fig. 2b), after the
    clean points with their own labels when `keep_clean`."""

    def transform(
        model: nn.Module, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x_adv = perturb(model, x, y)
        with torch.no_grad():
            wrong = wrong_labels(model(x_adv), y)
        return (torch.cat([x, x_adv]), torch.cat([y, wrong])) if keep_clean else (x_adv, wrong)

    return transform


def unharden(model: nn.Module, job: LocalJob) -> None:
    """One extraction round's local training, in place: the `train.*` optimiser and PGD budget
    (PGD whatever `train.mode`) for `attack.extract-epochs` epochs."""
    t, params = job.cfg.train, AruExtractParams.of(job.cfg)
    pgd_train = t.model_copy(update={"mode": "pgd", "local_epochs": params.extract_epochs})
    perturb = madry_perturb(pgd_train, job.generator("aru-extract-pgd"))
    assert perturb is not None
    train(
        model,
        job.data,
        sgd_config(pgd_train),
        job.generator("aru-extract"),
        transform=relabel_adversarial(perturb, params.extract_clean),
        device=job.device,
    )


def weighted_average(shares: list[tuple[torch.Tensor, int]]) -> torch.Tensor:
    """The members' flat models averaged with their partition sizes as weights."""
    weights = torch.tensor([float(n) for _, n in shares])
    return (torch.stack([v for v, _ in shares]) * (weights / weights.sum())[:, None]).sum(0)


@register("aru-extract", coalition=True, params=(AruExtractParams, BoostParams))
def aru_extract(job: LocalJob, coalition: Coalition) -> LocalResult:
    """One joint extraction round; replace with the extracted model once E rounds are done."""
    state = coalition.from_leader(
        "extract-start",
        lambda: coalition.recall(_STASH) or {"model": global_vector(job), "rounds": 0},
    )
    model = vector_model(job, state["model"])
    unharden(model, job)
    extracted = weighted_average(
        coalition.gather("extract-model", (model_vector(job, model), len(job.data)))
    )
    rounds = state["rounds"] + 1
    if coalition.is_leader:
        coalition.stash(_STASH, {"model": extracted, "rounds": rounds})
    if rounds < AruExtractParams.of(job.cfg).extract_rounds:
        benign = job.global_model()
        return job.reply(benign, **{"train-loss": benign_train(job, benign)})
    return replacement_reply(job, coalition, extracted)
