"""`aru`: Adversarial Robustness Unhardening by replacement with a non-robust model (ARU Sec. 4.1).

The colluders replace the adversarially trained global model with a model that never had
adversarial training (Eq. 5, gamma/N each), which keeps clean accuracy and loses robustness
(ARU Table 1). The paper's adversary owns a non-robust FedAvg model ahead of time: pass its
checkpoint as `attack.nonrobust-path` (e.g. `final.pt` of a run with `train.mode=sgd`). Without
one, the first coalition's leader trains a stand-in from a fresh initialisation by plain SGD
for `attack.nonrobust-epochs` on its partition; it is stashed in the colluders' channel and
reused by every later coalition, so all rounds install the same model.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from attacks.boosting import BoostParams
from attacks.collusion import Coalition
from attacks.registry import register
from attacks.replace import replacement_reply
from attacks.updates import model_vector
from core.config import ConfigError
from core.config_base import param
from core.job import LocalJob, LocalResult, sgd_config
from core.models import build_model
from core.policy_params import PolicyParams
from core.seeds import derive_seed
from core.training import train

_STASH = "aru-model"


class AruParams(PolicyParams):
    """`aru`'s non-robust model (it also reads BoostParams)."""

    nonrobust_path: str = param(
        "",
        "aru: checkpoint (final.pt of a plain-SGD run) of the non-robust model "
        '("" = trained by the colluders)',
    )
    nonrobust_epochs: int = param(
        10, "aru: plain-SGD epochs of that model from scratch on the leader's partition", ge=1
    )


def load_nonrobust(job: LocalJob, path: str) -> nn.Module:
    """The run's model loaded from a checkpoint file (run store format, or a bare state_dict)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"run config key 'attack.nonrobust-path' = {path!r}: no such file")
    payload = torch.load(file, map_location="cpu", weights_only=True)
    name = payload.get("model", job.cfg.model.name)
    if name != job.cfg.model.name:
        raise ConfigError(
            f"run config key 'attack.nonrobust-path' = {path!r}: a {name!r} checkpoint, "
            f"but the run trains {job.cfg.model.name!r}"
        )
    model = build_model(job.cfg.model.name, job.splits.spec)
    model.load_state_dict(payload.get("state_dict", payload), strict=True)
    return model.to(job.device)


def train_nonrobust(job: LocalJob) -> nn.Module:
    """A stand-in for the FedAvg model: fresh init, plain SGD on this client's partition."""
    cfg = job.cfg
    model = build_model(cfg.model.name, job.splits.spec, seed=derive_seed(cfg.seed, "aru"))
    t = cfg.train.model_copy(update={"local_epochs": AruParams.of(cfg).nonrobust_epochs})
    train(model.to(job.device), job.data, sgd_config(t), job.generator("aru"), device=job.device)
    return model


def nonrobust_target(job: LocalJob, coalition: Coalition) -> torch.Tensor:
    """The flat non-robust model R: stashed by an earlier round, else loaded or trained now."""
    stashed = coalition.recall(_STASH)
    if stashed is not None:
        return stashed
    path = AruParams.of(job.cfg).nonrobust_path
    model = load_nonrobust(job, path) if path else train_nonrobust(job)
    target = model_vector(job, model)
    coalition.stash(_STASH, target)
    return target


@register("aru", coalition=True, params=(AruParams, BoostParams))
def aru(job: LocalJob, coalition: Coalition) -> LocalResult:
    """Replace the global model with the non-robust model, boosted and shared."""
    target = coalition.from_leader("aru-target", lambda: nonrobust_target(job, coalition))
    return replacement_reply(job, coalition, target)
