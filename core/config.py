"""The one validated configuration of a run, parsed once from Flower's flat run config.

Flower hands the app a flat mapping of dotted keys (`train.lr`, `agg.rule`, ...), taken from
`[tool.flwr.app.config]` in pyproject.toml plus `--run-config` overrides. `RunConfig.from_flat`
turns it into nested pydantic models; a bad value raises `ConfigError` naming the key, the value
and what is allowed, before any training starts.

The defaults live here and only here: every field carries its default, constraints and a
one-line description (`core.config_base.param`), and pyproject's block is generated from them
(`python -m cli.config_toml --write`; a test fails when the two differ). The `attack.*` keys are
declared by the policies that read them (core/policy_params.py), registered before parsing.

Parsing resolves every sentinel ("-1 -> train.adv-eps") into its concrete value: a section
resolves the ones that depend on it alone, `RunConfig` the ones that depend on other sections,
and the policies' groups their own. So every consumer reads a concrete field, and config.json
holds resolved values. Those needing a run-time fact keep their sentinel and name where they
are resolved (`resolved_in`): `run-name`, `device` = auto, `agg.m`, `attack.alie-z`,
`attack.channel-dir`, `crfl.local-iters`. Checks across keys (policy names, backdoor target
against the classes, `crfl.t-adv` against `num-rounds`, ...) run at parse time too.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Self, TypeVar

from pydantic import (
    BaseModel,
    Field,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_validator,
)

from core.config_base import (
    ConfigError,
    Section,
    param,
    parse_float_list,
    positive_radii,
    sentinel_of,
)
from core.policy_params import (
    PolicyParams,
    attack_section,
    check_policy_name,
    check_policy_reads,
    params_of,
    registered_groups,
)

__all__ = ["ConfigError", "NodeConfig", "RunConfig", "parse_float_list"]

M = TypeVar("M", bound=BaseModel)

DatasetName = Literal["mnist", "fashion-mnist", "cifar10", "npz"]
PartitionScheme = Literal["iid", "dirichlet", "shards"]
AggregationRuleName = Literal[
    "mean",
    "median",
    "trimmed-mean",
    "krum",
    "multi-krum",
    "bulyan",
    "geometric-median",
    "norm-clip",
    "weak-dp",
]

# CFAT Sec. 5: the certification set is the first N_cert training points
DEFAULT_N_CERT = {"cifar10": 100}
MNIST_LIKE_N_CERT = 1000


class DataConfig(Section):
    """Where the data lives, the held-out splits (CFAT Sec. 5) and how clients share the rest."""

    dataset: DatasetName = param("mnist", "mnist | fashion-mnist | cifar10 | npz")
    dir: str = param(
        "", 'data directory ("" -> $CERTFL_DATA, else ./data; made absolute)', sentinel=""
    )
    npz_path: str = param("", "dataset = npz: file with x_train, y_train, x_test, y_test")
    download: bool = param(False, "let torchvision download missing files (needs a network)")
    n_cert: int = param(
        -1,
        "certification set: the first N_cert training points (-1 -> 1000, 100 for CIFAR-10)",
        sentinel=-1,
        ge=-1,
    )
    n_val: int = param(5000, "validation set: the next N_val training points", ge=0)
    partition: PartitionScheme = param("iid", "iid | dirichlet | shards")
    dirichlet_alpha: float = param(0.5, "dirichlet: concentration of the label shares", gt=0)
    shards_per_client: int = param(2, "shards: label-sorted shards per client", ge=1)
    max_client_samples: int = param(
        600, "cap on a client's partition (0 = the whole partition); small for the demo", ge=0
    )

    @model_validator(mode="after")
    def _resolve(self) -> Self:
        directory = self.dir or os.environ.get("CERTFL_DATA") or "data"
        _assign(self, dir=str(Path(directory).expanduser().resolve()))
        if self.n_cert < 0:
            _assign(self, n_cert=DEFAULT_N_CERT.get(self.dataset, MNIST_LIKE_N_CERT))
        return self


class ModelConfig(Section):
    """Which registered network to train."""

    name: str = param("conv-small", "a network of core/models.py")

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        from core.models import MODELS

        if v not in MODELS:
            raise ValueError(f"unknown model; allowed: {', '.join(sorted(MODELS))}")
        return v


class TrainConfig(Section):
    """Client sampling and benign local training (plain SGD or Madry PGD training)."""

    clients_per_round: int = param(5, "K: clients sampled per round", ge=1)
    min_nodes: int = param(
        0,
        "fewest connected nodes a round runs with (0 -> the aggregation rule's minimum replies)",
        sentinel=0,
        resolved_in="strategies.robust.required_nodes (the rule's minimum, known to strategies)",
        ge=0,
    )
    min_nodes_timeout: float = param(
        300.0, "seconds a round waits for min-nodes connected nodes before it is skipped", gt=0
    )
    round_timeout: float = param(600.0, "seconds the server waits for a round's replies", gt=0)
    local_epochs: int = param(2, "local epochs per round", ge=1)
    batch_size: int = param(32, "local batch size", ge=1)
    lr: float = param(0.05, "local SGD learning rate", gt=0)
    momentum: float = param(0.9, "local SGD momentum", ge=0, lt=1)
    weight_decay: float = param(0.0, "local SGD weight decay", ge=0)
    mode: Literal["sgd", "pgd"] = param("pgd", "sgd | pgd (Madry adversarial training)")
    adv_eps: float = param(0.1, "L_adv: PGD training radius (CFAT trains MNIST at 0.25)", ge=0)
    adv_steps: int = param(5, "PGD steps of adversarial training", ge=1)
    adv_step_size: float = param(
        0.0, "PGD step size (0 -> 2.5 * adv-eps / adv-steps, Madry's rule)", sentinel=0.0, ge=0
    )
    adv_random_start: bool = param(True, "PGD starts from a random point of the L-inf ball")

    @model_validator(mode="after")
    def _resolve(self) -> Self:
        if self.adv_step_size == 0:
            _assign(self, adv_step_size=2.5 * self.adv_eps / self.adv_steps)
        return self


class AggregationConfig(Section):
    """The robust aggregation rule and its parameters (see strategies/aggregators.py)."""

    rule: AggregationRuleName = param(
        "median",
        "mean | median | trimmed-mean | krum | multi-krum | bulyan | geometric-median | "
        "norm-clip | weak-dp",
    )
    f: int = param(1, "assumed Byzantine replies per round (krum, multi-krum, bulyan)", ge=0)
    beta: float = param(0.2, "trimmed-mean: cut fraction per side", ge=0, lt=0.5)
    m: int = param(
        0,
        "multi-krum: models averaged (0 -> K - f, K the round's valid replies)",
        sentinel=0,
        resolved_in="strategies.aggregators.multi_krum (K is known per round)",
        ge=0,
    )
    tau: float = param(1.0, "norm-clip / weak-dp: L2 bound on each update", gt=0)
    noise_std: float = param(0.0, "weak-dp: std of the Gaussian noise on the aggregate", ge=0)
    weighting: Literal["uniform", "num-examples"] = param(
        "uniform", "uniform | num-examples (client counts are untrusted)"
    )
    weight_cap: float = param(2.0, "num-examples weights capped at cap x median count", ge=1)


class EvalConfig(Section):
    """Central evaluation of the global model every round, on a fixed test subset."""

    n_test: int = param(500, "test points of the fixed central subset (0 = the whole set)", ge=0)
    adv_eps: float = param(-1.0, "PGD radius (-1 -> train.adv-eps)", sentinel=-1.0, ge=-1)
    adv_steps: int = param(10, "PGD steps (0 = no PGD evaluation)", ge=0)
    batch_size: int = param(500, "evaluation batch size", ge=1)
    l_crt: tuple[float, ...] = param(
        (), 'also certify the global model at these radii, e.g. "0.1,0.15" ("" = none)'
    )
    n_cert: int = param(100, "... on the first n-cert points of the test subset", ge=1)
    temperature: float = param(
        -1.0,
        "also PGD on logits / T, the distillation bypass (-1 -> attack.distill-temperature, "
        "0 = off)",
        sentinel=-1.0,
        ge=-1,
    )

    @field_validator("l_crt", mode="before")
    @classmethod
    def _radii(cls, v: Any) -> tuple[float, ...]:
        return positive_radii(v, allow_empty=True)


class RolesConfig(Section):
    """The seeded share of virtual clients per non-benign role (simulation), and attack timing."""

    malicious_fraction: float = param(
        0.35, "simulation: seeded share of malicious clients (CFAT: 35%)", ge=0, le=1
    )
    attack: str = param("distillation", 'their policy (attacks/; "" = none)')
    fl_wbc_fraction: float = param(0.0, "simulation: seeded share of FL-WBC clients", ge=0, le=1)
    attack_start_round: int = param(3, "malicious clients train benignly before this round", ge=1)
    attack_end_round: int = param(
        0, "... and after this one (0 -> num-rounds: no end)", sentinel=0, ge=0
    )
    min_colluders: int = param(
        3, "k: colluders attack only in rounds where >= k of them are sampled (CFAT: 3 of 5)", ge=1
    )


class FLWBCConfig(Section):
    """FL-WBC clients (roles.fl-wbc-fraction or node role fl-wbc; FL-WBC Sec. 5.1, Eq. 8-10).

    Laplace noise on the flat Hessian directions. The paper calls s the std of the Laplace
    noise; the authors' code passes s as its scale b (std = sqrt(2) b). `s-means` says which:
    "scale" (b = s, the code) or "std" (b = s / sqrt 2).
    """

    s: float = param(0.4, "Laplace noise parameter s (FL-WBC default 0.4)", ge=0)
    s_means: Literal["scale", "std"] = param(
        "scale", "scale: s is the Laplace scale b (authors' code) | std: s is its std (paper)"
    )


class DPConfig(Section):
    """Differential-privacy baselines (FL-WBC Sec. 7.1): clip the update, add noise.

    `local`: each honest client clips its own update to L2 norm `clip` and adds noise of std
    z * clip. `central`: the server clips every update, aggregates, adds noise of std
    z * clip / K to the aggregate (Flower's convention). z = `noise-multiplier`.
    """

    mode: Literal["none", "local", "central"] = param(
        "none", "none | local (each honest client) | central (the server)"
    )
    clip: float = param(5.0, "L2 clipping norm of an update (5 Fashion-MNIST, 10 CIFAR-10)", gt=0)
    noise_multiplier: float = param(
        1.0, "z: noise std z * clip (local) or z * clip / K (central)", ge=0
    )
    noise: Literal["gaussian", "laplace"] = param(
        "gaussian", "gaussian | laplace (same std; FL-WBC used Laplace)"
    )


GateMetric = Literal["clean-acc", "pgd-acc", "cert-acc", "cert-loss"]


class GateConfig(Section):
    """The certification gate (strategies/gate.py): measure each candidate model, skip it if it
    fails the acceptance rule (core/gate_rule.py, where both rules' formulas are).

    `cfat` (CFAT Sec. 3): accuracies must reach `acc-ratio` times the last accepted model's and
    each certified loss may grow to at most (1 + loss-growth) times its reference plus
    `loss-slack`; only floors in the first `warmup-rounds` rounds. `calibrated` (the default):
    over the last `window` accepted models (the round-0 model included early on) the reference
    is the median certified loss and the best accuracy; tolerances on a log scale are
    `spread-factor` times how far the last `history` accepted models strayed from theirs, within
    [tightest, loosest] = [acc-ratio, acc-ratio-floor] for accuracies and [1 + loss-growth,
    loss-factor-max] for certified losses, which also never exceed `loss-ceiling` times the
    round-0 model's. Floors apply in every round under both rules.
    """

    enabled: bool = param(True, "wrap the robust strategy in the certification gate")
    l_crt: tuple[float, ...] = param((0.1,), 'certification radii L_crt, e.g. "0.1,0.15"')
    l_adv: float = param(
        -1.0, "PGD radius L_adv on the validation set (-1 -> train.adv-eps)", sentinel=-1.0, ge=-1
    )
    pgd_steps: int = param(10, "PGD steps on the validation set", ge=1)
    pgd_restarts: int = param(1, "PGD restarts on the validation set", ge=1)
    metrics: tuple[GateMetric, ...] = param(
        ("clean-acc", "pgd-acc", "cert-acc", "cert-loss"), "the metrics that take part in the rule"
    )
    rule: Literal["cfat", "calibrated"] = param(
        "calibrated", "the acceptance rule enforced: cfat | calibrated"
    )
    shadow_rules: tuple[Literal["cfat", "calibrated"], ...] = param(
        (), 'rules judged and recorded beside it, never enforced, e.g. "cfat"'
    )
    acc_ratio: float = param(
        0.9, "accuracies must reach this share of the reference (calibrated: the tightest)",
        gt=0, le=1,
    )  # fmt: skip
    loss_growth: float = param(
        0.1, "certified loss may grow by this share of the reference (calibrated: the tightest)",
        ge=0,
    )  # fmt: skip
    loss_slack: float = param(0.001, "... plus this absolute slack (a reference of 0)", ge=0)
    warmup_rounds: int = param(2, "cfat: rounds accepted on the floors alone", ge=0)
    window: int = param(5, "calibrated: accepted models whose median is the reference", ge=1)
    history: int = param(20, "calibrated: accepted models the spread is learned from", ge=1)
    spread_factor: float = param(2.0, "calibrated: tolerance = factor x the benign spread", gt=0)
    acc_ratio_floor: float = param(0.5, "calibrated: the loosest accuracy ratio", gt=0, le=1)
    acc_slack: float = param(
        0.02, "calibrated: accuracies may fall this much more (absolute; one point of a small set)",
        ge=0, le=1,
    )  # fmt: skip
    loss_factor_max: float = param(4.0, "calibrated: the loosest certified-loss growth", ge=1)
    loss_ceiling: float = param(
        2.0, "calibrated: certified loss at most this x the round-0 model's (0 = off)", ge=0
    )
    min_clean_acc: float = param(0.0, "absolute floor on clean accuracy, every round", ge=0, le=1)
    min_pgd_acc: float = param(0.0, "absolute floor on PGD accuracy, every round", ge=0, le=1)
    min_cert_acc: float = param(0.0, "absolute floor on certified accuracy", ge=0, le=1)
    method: Literal["zonotope", "interval"] = param("zonotope", "zonotope | interval")
    sound_fp: bool = param(False, "account for float32 rounding (float64, slower)")
    budget_mb: int = param(256, "certifier working memory per chunk (MiB)", ge=1)
    batch_size: int = param(500, "PGD validation batch (a block of the pool scheduler)", ge=1)
    scheduler: Literal["pool", "serial"] = param(
        "pool", "pool (worker processes share the checks) | serial (one pass)"
    )
    workers: int = param(2, "pool: processes, each running torch with one thread", ge=1)
    early_verdict: bool = param(
        True, "pool: stop measuring once the verdict is known (not with shadow rules)"
    )
    early_delta: float = param(1e-3, "error bound of the sequential PGD verdict", gt=0, lt=1)
    init_state: str = param(
        "", 'JSON of a gate\'s state_dict() to continue from ("" = measure round 0)'
    )

    @field_validator("l_crt", mode="before")
    @classmethod
    def _radii(cls, v: Any) -> tuple[float, ...]:
        return positive_radii(v, allow_empty=False)

    @field_validator("metrics", "shadow_rules", mode="before")
    @classmethod
    def _name_list(cls, v: Any) -> Any:
        return tuple(p.strip() for p in v.split(",") if p.strip()) if isinstance(v, str) else v


class CRFLConfig(Section):
    """CRFL (Xie et al., ICML 2021; strategies/crfl.py, certify/crfl.py, `certfl crfl-certify`).

    The server clips the global model to norm rho_t and adds N(0, sigma^2) each round; at test
    time, parameter smoothing and a certified radius, whose constants at 0 come from the run.
    """

    enabled: bool = param(False, "the server's clip-and-perturb step after aggregation")
    rho: float = param(
        15.0, "cap of the clip threshold rho_t = min(rho, rho-start + rho-growth * t)", gt=0
    )
    rho_start: float = param(2.0, "rho_t at round 0 (CRFL MNIST: 2)", gt=0)
    rho_growth: float = param(0.1, "rho_t growth per round (CRFL MNIST: 0.1)", ge=0)
    sigma: float = param(0.01, "sigma_t: noise std on the global model in rounds t < T", gt=0)
    sigma_test: float = param(0.01, "sigma_T: parameter-smoothing noise std at test time", gt=0)
    n_copies: int = param(1000, "M: noisy model copies in the majority vote (CRFL: 1000)", ge=1)
    alpha: float = param(
        0.001, "the p_A lower / p_B upper bounds hold jointly w.p. >= 1 - alpha", gt=0, lt=1
    )
    bound: Literal["hoeffding", "clopper-pearson"] = param(
        "hoeffding", "hoeffding (CRFL code) | clopper-pearson (exact binomial)"
    )
    t_adv: int = param(0, "attack round t_adv (0 -> roles.attack-start-round)", sentinel=0, ge=0)
    n_attackers: int = param(
        0,
        "R (0 -> round(roles.malicious-fraction * train.clients-per-round), at least 1)",
        sentinel=0,
        ge=0,
    )
    agg_weight: float = param(
        0.0, "p_i, an attacker's aggregation weight (0 -> 1 / train.clients-per-round)",
        sentinel=0.0, ge=0, le=1,
    )  # fmt: skip
    gamma: float = param(
        0.0, "gamma_i, an attacker's update scale (0 -> 1: the backdoor policy does not boost)",
        sentinel=0.0, ge=0,
    )  # fmt: skip
    local_iters: int = param(
        0,
        "tau_i, local iterations (0 -> local-epochs * ceil(client examples / batch-size))",
        sentinel=0,
        resolved_in="cli.crfl_constants.local_iterations (the clients' example counts)",
        ge=0,
    )
    lr: float = param(0.0, "eta_i, local learning rate (0 -> train.lr)", sentinel=0.0, ge=0)
    poison_fraction: float = param(
        0.0, "q_B / n_B, triggered share of a batch (0 -> attack.poison-fraction)",
        sentinel=0.0, ge=0, le=1,
    )  # fmt: skip
    lz: float = param(
        0.0, "L_Z (0 -> sqrt(2 + 2 rho + rho^2) at rho = rho_{t_adv}, as CRFL's code)",
        sentinel=0.0, ge=0,
    )  # fmt: skip

    def clip_threshold(self, server_round: int) -> float:
        """rho_t = min(rho, rho_start + rho_growth * t)."""
        return min(self.rho, self.rho_start + self.rho_growth * server_round)


class RunConfig(Section):
    """Everything one run needs; built once by the server and once per client process."""

    seed: int = param(0, "seeds sampling, roles, partitions, initialisation and noise", ge=0)
    num_rounds: int = param(6, "federated rounds", ge=1)
    output_dir: str = param("runs", "run directories go here (relative to the ServerApp's cwd)")
    run_name: str = param(
        "",
        'the run directory\'s name ("" -> a UTC timestamp and the seed)',
        sentinel="",
        resolved_in="server.run_store.resolve_run_dir (the server's start time)",
    )
    resume_from: str = param(
        "", 'a run directory to continue from its last checkpoint ("" = a fresh run)'
    )
    init_checkpoint: str = param(
        "", 'start from this checkpoint\'s model (server/run_store.py format; "" = initialise)'
    )
    device: Literal["cpu", "cuda", "auto"] = param(
        "cpu",
        "cpu | cuda | auto (-> cuda when this process has one)",
        sentinel="auto",
        resolved_in="core.device.resolve_device (each process's hardware)",
    )
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    agg: AggregationConfig = Field(default_factory=AggregationConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    roles: RolesConfig = Field(default_factory=RolesConfig)
    attack: SerializeAsAny[PolicyParams] = Field(default_factory=lambda: attack_section()())
    fl_wbc: FLWBCConfig = Field(default_factory=FLWBCConfig)
    dp: DPConfig = Field(default_factory=DPConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    crfl: CRFLConfig = Field(default_factory=CRFLConfig)

    @field_validator("attack", mode="before")
    @classmethod
    def _registered_groups(cls, v: Any) -> Any:
        """The `attack.*` keys, validated by the groups the policies registered."""
        return attack_section().model_validate(v) if isinstance(v, Mapping) else v

    @model_validator(mode="after")
    def _resolve(self) -> Self:
        """Resolve the policies' and the cross-section sentinels, then check the keys against
        each other."""
        attack = _resolved_attack(self)
        for name, fields in _cross_section_values(self, attack).items():
            _assign(self, **{name: getattr(self, name).model_copy(update=fields)})
        _assign(self, attack=attack)
        _check_unresolved(self)
        _check(self)
        return self

    @classmethod
    def from_flat(cls, flat: Mapping[str, Any]) -> RunConfig:
        """Validate Flower's flat dotted run config; raise ConfigError naming each bad key."""
        return _validate(cls, flat, "run config")

    def to_flat(self) -> dict[str, Any]:
        """The resolved config as flat dotted keys, as written into the run directory."""
        return _flatten(self.model_dump(by_alias=True))


def _assign(model: BaseModel, **values: Any) -> None:
    """Set resolved values on a frozen model while it is being validated (parsed)."""
    for name, value in values.items():
        object.__setattr__(model, name, value)


def _resolved_attack(raw: RunConfig) -> PolicyParams:
    """The attack section with every registered group's sentinels resolved."""
    update: dict[str, Any] = {}
    for group in registered_groups():
        update |= group.resolve(raw.attack, raw)
    return raw.attack.model_copy(update=update)


def cross_section_defaults(cfg: RunConfig, attack: PolicyParams) -> dict[str, dict[str, Any]]:
    """What each sentinel that depends on other sections stands for in `cfg`: per section,
    field -> value (None: a policy parameter that no registered group provides)."""
    train, roles, crfl = cfg.train, cfg.roles, cfg.crfl
    t_adv = crfl.t_adv or roles.attack_start_round  # the attack round, at whose rho_t L_Z is taken
    return {
        "eval": {"adv_eps": train.adv_eps, "temperature": _filled("eval.temperature", attack)},
        "gate": {"l_adv": train.adv_eps},
        "roles": {"attack_end_round": cfg.num_rounds},
        "crfl": {
            "t_adv": roles.attack_start_round,
            "n_attackers": max(1, round(roles.malicious_fraction * train.clients_per_round)),
            "agg_weight": 1 / train.clients_per_round,
            "gamma": 1.0,
            "lr": train.lr,
            "poison_fraction": _filled("crfl.poison-fraction", attack),
            "lz": crfl_lz(crfl.clip_threshold(t_adv)),
        },
    }


def _cross_section_values(raw: RunConfig, attack: PolicyParams) -> dict[str, dict[str, Any]]:
    """Per section, the concrete values of its sentinels that depend on other sections."""
    updates: dict[str, dict[str, Any]] = {}
    for section, values in cross_section_defaults(raw, attack).items():
        current = getattr(raw, section)
        for name, value in values.items():
            is_sentinel, sentinel, _ = sentinel_of(type(current).model_fields[name])
            assert is_sentinel, f"{section}.{name} is resolved but not declared a sentinel"
            if getattr(current, name) == sentinel:
                if value is None:
                    raise ConfigError(
                        f"run config key '{section}.{name.replace('_', '-')}' = {sentinel!r} "
                        "stands for a policy parameter, and no registered policy provides it; "
                        "set it, or register the policies (attacks.registry.load_policies())"
                    )
                updates.setdefault(section, {})[name] = value
    return updates


def crfl_lz(rho: float) -> float:
    """CRFL code's L_Z at clip threshold rho: sqrt(2 + 2 rho + rho^2)."""
    return math.sqrt(2 + 2 * rho + rho**2)


def _filled(key: str, attack: PolicyParams) -> Any:
    """The value of the registered group field that core sentinel `key` stands for, or None."""
    for group in registered_groups():
        if key in group.fills:
            return getattr(attack, group.fills[key])
    return None


def _check_unresolved(cfg: BaseModel, prefix: str = "") -> None:
    """Fail if a parse-time sentinel survived resolution (a resolver is missing: a bug)."""
    for name, field in type(cfg).model_fields.items():
        value = getattr(cfg, name)
        if isinstance(value, BaseModel):
            _check_unresolved(value, f"{prefix}{name}.")
            continue
        is_sentinel, sentinel, resolved_in = sentinel_of(field)
        if is_sentinel and not resolved_in and value == sentinel:
            raise ConfigError(f"config key '{prefix}{name}' = {value!r} was not resolved")


def _check(cfg: RunConfig) -> None:
    """The checks that need several keys, run once the config is resolved."""
    r = cfg.roles
    if r.attack:
        check_policy_name(r.attack, "run config key 'roles.attack'")
        check_policy_reads(cfg, r.attack, "roles.attack")
    elif r.malicious_fraction > 0:
        raise ConfigError(
            f"run config key 'roles.malicious-fraction' = {r.malicious_fraction} needs "
            "'roles.attack' to name a policy (or set it to 0)"
        )
    if r.malicious_fraction + r.fl_wbc_fraction > 1:
        raise ConfigError(
            f"run config keys 'roles.malicious-fraction' ({r.malicious_fraction}) + "
            f"'roles.fl-wbc-fraction' ({r.fl_wbc_fraction}) exceed 1"
        )
    if cfg.data.dataset == "npz" and not cfg.data.npz_path:
        raise ConfigError("run config key 'data.npz-path' = '': data.dataset = 'npz' needs a file")
    if cfg.crfl.enabled:
        check_crfl_attack_round(cfg)
    chosen = params_of(r.attack) if r.attack else ()
    for group in registered_groups():
        group.check(cfg.attack, cfg, group in chosen)


def check_crfl_attack_round(cfg: RunConfig) -> None:
    """CRFL certifies one attack round t_adv (`crfl.t-adv`, else roles.attack-start-round),
    which must lie in 1..num-rounds."""
    if not 1 <= cfg.crfl.t_adv <= cfg.num_rounds:
        raise ConfigError(
            f"run config key 'crfl.t-adv' resolves to {cfg.crfl.t_adv}: must be in 1..num-rounds "
            f"({cfg.num_rounds}); set crfl.t-adv or roles.attack-start-round"
        )


class NodeConfig(Section):
    """A SuperNode's own config: its data partition and, in deployment, its role."""

    partition_id: int = Field(ge=0, description="this node's partition, 0..num-partitions - 1")
    num_partitions: int = Field(ge=1, description="partitions of the training pool")
    role: str = param(
        "", 'benign | fl-wbc | attack:<policy> ("" -> the seeded simulation assignment)'
    )

    @field_validator("role")
    @classmethod
    def _known_role(cls, v: str) -> str:
        from core.roles import validate_role

        return validate_role(v) if v else v

    @classmethod
    def from_flat(cls, flat: Mapping[str, Any]) -> NodeConfig:
        """Validate a node config; extra keys Flower adds are ignored, ours are checked."""
        known = {"partition-id", "num-partitions", "role"}
        cfg = _validate(cls, {k: v for k, v in flat.items() if k in known}, "node config")
        if cfg.partition_id >= cfg.num_partitions:
            raise ConfigError(
                f"node config key 'partition-id' = {cfg.partition_id}: must be < "
                f"num-partitions ({cfg.num_partitions})"
            )
        return cfg


def _unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"config key {key!r} nests under a scalar key {part!r}")
        node[leaf] = value
    return nested


def _flatten(nested: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in nested.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = list(value) if isinstance(value, tuple) else value
    return flat


def _validate(model: type[M], flat: Mapping[str, Any], what: str) -> M:
    """Validate `flat` into `model`, turning pydantic's errors into one readable ConfigError."""
    try:
        return model.model_validate(_unflatten(flat))
    except ValidationError as err:
        lines = []
        for e in err.errors():
            key = ".".join(str(p) for p in e["loc"])
            cause = e.get("ctx", {}).get("error")
            if isinstance(cause, ConfigError):
                lines.append(str(cause))
            elif e["type"] == "extra_forbidden":
                hint = ""
                if key.startswith("attack.") and not registered_groups():
                    hint = (
                        " (no policy parameters are registered: attacks.registry.load_policies())"
                    )
                lines.append(f"{what} key {key!r} is unknown{hint}")
            elif e["type"] == "missing":
                lines.append(f"{what} key {key!r} is required")
            else:
                lines.append(f"{what} key {key!r} = {e['input']!r}: {e['msg']}")
        raise ConfigError("; ".join(lines)) from None
