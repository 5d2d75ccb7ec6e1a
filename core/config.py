"""The one validated configuration of a run, parsed once from Flower's flat run config.

Flower hands the app a flat mapping of dotted keys (`train.lr`, `agg.rule`, ...), taken from
`[tool.flwr.app.config]` in pyproject.toml plus `--run-config` overrides. `RunConfig.from_flat`
turns it into nested pydantic models; a bad value raises `ConfigError` naming the key, the value
and what is allowed, before any training starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A run or node config value that is unknown, mistyped or out of range."""


def _hyphenate(name: str) -> str:
    return name.replace("_", "-")


class _Section(BaseModel):
    """Base of every config section: hyphenated keys, unknown keys rejected, immutable."""

    model_config = ConfigDict(
        alias_generator=_hyphenate, populate_by_name=True, extra="forbid", frozen=True
    )


def parse_float_list(value: Any) -> tuple[float, ...]:
    """Parse "0.1,0.15" (Flower configs hold scalars only) or a sequence into floats."""
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",") if p.strip()]
        try:
            return tuple(float(p) for p in parts)
        except ValueError:
            raise ValueError(f"expected comma-separated numbers, got {value!r}") from None
    if isinstance(value, int | float):
        return (float(value),)
    return tuple(float(v) for v in value)


def _positive_radii(value: Any, allow_empty: bool) -> tuple[float, ...]:
    """Certification radii from "0.1,0.15": each > 0, at least one unless `allow_empty`."""
    radii = parse_float_list(value)
    if (not radii and not allow_empty) or any(r <= 0 for r in radii):
        raise ValueError("expected one or more radii > 0, e.g. '0.1,0.15'")
    return radii


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


class DataConfig(_Section):
    """Where the data lives, the held-out splits (CFAT Sec. 5) and how clients share the rest."""

    dataset: DatasetName = "mnist"
    dir: str = ""  # "" -> $CERTFL_DATA -> ./data
    npz_path: str = ""  # for dataset = "npz": file relative to dir (or absolute)
    download: bool = False  # let torchvision download missing files (needs a network)
    n_cert: int = Field(-1, ge=-1)  # -1 -> dataset default (1000 MNIST-like, 100 CIFAR-10)
    n_val: int = Field(5000, ge=0)
    partition: PartitionScheme = "iid"
    dirichlet_alpha: float = Field(0.5, gt=0)
    shards_per_client: int = Field(2, ge=1)
    max_client_samples: int = Field(0, ge=0)  # 0 -> all of the client's partition


class ModelConfig(_Section):
    """Which registered network to train."""

    name: str = "conv-small"

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        from core.models import MODELS

        if v not in MODELS:
            raise ValueError(f"unknown model; allowed: {', '.join(sorted(MODELS))}")
        return v


class TrainConfig(_Section):
    """Client sampling and benign local training (plain SGD or Madry PGD training)."""

    clients_per_round: int = Field(5, ge=1)  # sampled per round from the nodes connected then
    min_nodes: int = Field(0, ge=0)  # fewest connected nodes a round runs with; 0 -> the rule's
    min_nodes_timeout: float = Field(300.0, gt=0)  # wait this long for min-nodes, else skip
    round_timeout: float = Field(600.0, gt=0)  # a reply not in by then is a failure of the round
    local_epochs: int = Field(1, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    mode: Literal["sgd", "pgd"] = "pgd"
    adv_eps: float = Field(0.25, ge=0)  # L_adv
    adv_steps: int = Field(10, ge=1)
    adv_step_size: float = Field(0.0, ge=0)  # 0 -> 2.5 * eps / steps
    adv_random_start: bool = True


class AggregationConfig(_Section):
    """The robust aggregation rule and its parameters (see strategies/aggregators.py)."""

    rule: AggregationRuleName = "median"
    f: int = Field(1, ge=0)  # assumed Byzantine replies per round (Krum, Multi-Krum, Bulyan)
    beta: float = Field(0.2, ge=0, lt=0.5)  # trimmed-mean cut fraction per side
    m: int = Field(0, ge=0)  # Multi-Krum: models averaged; 0 -> K - f
    tau: float = Field(1.0, gt=0)  # norm-clip / weak-dp: L2 bound on each update
    noise_std: float = Field(0.0, ge=0)  # weak-dp: std of the Gaussian noise on the aggregate
    weighting: Literal["uniform", "num-examples"] = "uniform"
    weight_cap: float = Field(2.0, ge=1)  # num-examples weights capped at cap * median count


class EvalConfig(_Section):
    """Central evaluation of the global model every round, on a fixed test subset."""

    n_test: int = Field(1000, ge=0)  # 0 -> the whole test set
    adv_eps: float = Field(-1.0, ge=-1)  # -1 -> train.adv-eps
    adv_steps: int = Field(10, ge=0)
    batch_size: int = Field(500, ge=1)
    l_crt: tuple[float, ...] = ()  # also certify at these radii ("" -> no certification)
    n_cert: int = Field(100, ge=1)  # ... on the first n-cert points of the test subset
    temperature: float = Field(-1.0, ge=-1)  # also PGD on z / T; -1 -> distillation's T, 0 -> off

    @field_validator("l_crt", mode="before")
    @classmethod
    def _radii(cls, v: Any) -> tuple[float, ...]:
        return _positive_radii(v, allow_empty=True)


class RolesConfig(_Section):
    """The seeded share of virtual clients per non-benign role (simulation), and attack timing."""

    malicious_fraction: float = Field(0.0, ge=0, le=1)
    attack: str = ""  # the policy of the malicious share, e.g. "distillation"
    fl_wbc_fraction: float = Field(0.0, ge=0, le=1)
    attack_start_round: int = Field(1, ge=1)  # before it, malicious clients train benignly
    attack_end_round: int = Field(0, ge=0)  # after it too; 0 -> no end
    min_colluders: int = Field(1, ge=1)  # k: colluders attack only when >= k share a round


class AttackConfig(_Section):
    """Parameters of the malicious policies (attacks/), each with its paper's default."""

    scale_factor: float = Field(100.0, gt=0)  # logit-scaling: factor on the last layer
    distill_temperature: float = Field(0.0, ge=0)  # distillation T; 0 -> 100 MNIST-like, 25 CIFAR
    distill_epochs: int = Field(10, ge=1)  # epochs for the teacher and again for the student
    distill_lr: float = Field(3e-3, gt=0)  # Adam step size of both
    adaptive_eps_start: float = Field(0.1, gt=0)  # adaptive-cert: first radius matched (CFAT)
    adaptive_eps_step: float = Field(0.01, gt=0)  # ... grown by this once matched
    adaptive_steps: int = Field(500, ge=1)  # ... optimiser step budget
    adaptive_seconds: float = Field(600.0, gt=0)  # ... time budget
    boost: float = Field(0.0, ge=0)  # model replacement gamma; 0 -> clients-per-round (n_S/n_i)
    nonrobust_path: str = ""  # aru: checkpoint of a non-robust model; "" -> colluders train one
    nonrobust_epochs: int = Field(10, ge=1)  # aru: plain-SGD epochs of that model from scratch
    extract_rounds: int = Field(50, ge=1)  # aru-extract: E, joint extraction rounds (ARU Sec. 4.2)
    extract_clean: bool = True  # aru-extract: also train on the clean points (not in the paper)
    extract_epochs: int = Field(0, ge=0)  # aru-extract: epochs per round; 0 -> train.local-epochs
    flip_scale: float = Field(1.0, gt=0)  # sign-flip: c in G - c (U - G)
    noise_std: float = Field(1.0, gt=0)  # gaussian: sigma of the noise sent as the update
    alie_z: float = Field(0.0, ge=0)  # alie: z_max; 0 -> Baruch et al.'s formula from n and f
    ipm_epsilon: float = Field(0.1, gt=0)  # ipm: epsilon (Xie et al. 2020)
    backdoor_target: int = Field(0, ge=0)  # backdoor: the class the trigger maps inputs to
    trigger_magnitude: float = Field(0.0, ge=-1, le=1)  # backdoor: L-inf size; <= 0 -> CFAT's
    poison_fraction: float = Field(0.3, gt=0, lt=1)  # backdoor: share of each batch triggered
    edge_mode: Literal["blackbox", "pgd", "pgd-replace"] = "pgd"  # edge-case (Tails Sec. 2)
    edge_samples: int = Field(-1, ge=-1)  # edge-case images the attacker holds; -1 -> 66 / 100
    edge_fraction: float = Field(-1.0, ge=-1, le=1)  # their share of its data; -1 -> 0.4 / 0.2
    edge_delta: float = Field(2.0, gt=0)  # edge-case pgd: L2 radius around the global model

    @field_validator("edge_samples", "edge_fraction")
    @classmethod
    def _default_or_positive(cls, v: float) -> float:
        if v != -1 and v <= 0:
            raise ValueError("expected -1 (the paper's default) or a value > 0")
        return v

    # the colluders' own channel (attacks/collusion.py); "" -> <output-dir>/colluders/run-<id>
    channel_dir: str = ""
    rendezvous_s: float = Field(10.0, gt=0)  # how long colluders wait for each other per round
    channel_timeout: float = Field(600.0, gt=0)  # how long a member waits for a partner's share
    tp_alpha: float = Field(0.5, ge=0, le=1)  # targeted-poisoning: weight of the benign loss
    tp_n_images: int = Field(1, ge=1)  # targeted-poisoning: |D_M| (FL-WBC: 1 or 10)
    tp_boost: bool = False  # targeted-poisoning: boost the update (attack.boost, Bhagoji)


class FLWBCConfig(_Section):
    """FL-WBC client defense (Sec. 5.1, Eq. 8-10): Laplace noise on the flat Hessian directions.

    The paper calls s the std of the Laplace noise; the authors' code passes s as its scale b
    (std = sqrt(2) b). `s-means` says which: "scale" (b = s, the code) or "std" (b = s / sqrt 2).
    """

    s: float = Field(0.4, ge=0)
    s_means: Literal["scale", "std"] = "scale"


class DPConfig(_Section):
    """Differential-privacy baselines (FL-WBC Sec. 7.1, Naseri et al.): clip updates, add noise.

    `local`: each honest client clips its own update to L2 norm `clip` and adds noise of std
    z * clip. `central`: the server clips every update, aggregates, adds noise of std
    z * clip / K to the aggregate (Flower's convention). z = `noise-multiplier`.
    """

    mode: Literal["none", "local", "central"] = "none"
    clip: float = Field(5.0, gt=0)  # FL-WBC Sec. 7.1: 5 for Fashion-MNIST, 10 for CIFAR-10
    noise_multiplier: float = Field(1.0, ge=0)
    noise: Literal["gaussian", "laplace"] = "gaussian"  # FL-WBC used Laplace of the same std


class CRFLConfig(_Section):
    """CRFL (Xie et al., ICML 2021): the server clips the global model to norm rho_t and adds
    N(0, sigma^2) each round (strategies/crfl.py); parameter smoothing with sigma-test and the
    certified radius at test time (certify/crfl.py). Radius constants at 0 come from the run.
    """

    enabled: bool = False
    rho: float = Field(15.0, gt=0)  # cap of rho_t = min(rho, rho-start + rho-growth * t)
    rho_start: float = Field(2.0, gt=0)  # CRFL MNIST: rho_t = min(15, 2 + 0.1 t)
    rho_growth: float = Field(0.1, ge=0)
    sigma: float = Field(0.01, gt=0)  # sigma_t: noise on the global model in rounds t < T
    sigma_test: float = Field(0.01, gt=0)  # sigma_T: parameter-smoothing noise at test time
    n_copies: int = Field(1000, ge=1)  # M: noisy copies in the majority vote
    alpha: float = Field(0.001, gt=0, lt=1)  # the p_A / p_B bounds hold w.p. >= 1 - alpha
    bound: Literal["hoeffding", "clopper-pearson"] = "hoeffding"
    t_adv: int = Field(0, ge=0)  # attack round; 0 -> roles.attack-start-round
    n_attackers: int = Field(0, ge=0)  # R; 0 -> round(malicious-fraction * clients-per-round)
    agg_weight: float = Field(0.0, ge=0, le=1)  # p_i; 0 -> 1 / clients-per-round
    gamma: float = Field(0.0, ge=0)  # attacker's update scale factor; 0 -> 1 (no boosting)
    local_iters: int = Field(0, ge=0)  # tau; 0 -> local-epochs * ceil(client data / batch)
    lr: float = Field(0.0, ge=0)  # eta; 0 -> train.lr
    poison_fraction: float = Field(0.0, ge=0, le=1)  # q_B / n_B; 0 -> attack.poison-fraction
    lz: float = Field(0.0, ge=0)  # L_Z; 0 -> sqrt(2 + 2 rho + rho^2) at rho_{t_adv} (CRFL code)


GateMetric = Literal["clean-acc", "pgd-acc", "cert-acc", "cert-loss"]


class GateConfig(_Section):
    """The certification gate (strategies/gate.py): measure each candidate model, skip it if it
    fails the acceptance rule (strategies/gate_rule.py, where both rules' formulas are).

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

    enabled: bool = True
    l_crt: tuple[float, ...] = (0.1,)  # certification radii, e.g. "0.1,0.15"
    l_adv: float = Field(-1.0, ge=-1)  # PGD radius on the validation set; -1 -> train.adv-eps
    pgd_steps: int = Field(10, ge=1)
    pgd_restarts: int = Field(1, ge=1)
    metrics: tuple[GateMetric, ...] = ("clean-acc", "pgd-acc", "cert-acc", "cert-loss")
    acc_ratio: float = Field(0.9, gt=0, le=1)
    loss_growth: float = Field(0.1, ge=0)
    loss_slack: float = Field(1e-3, ge=0)  # absolute: a reference loss of 0 still allows noise
    warmup_rounds: int = Field(2, ge=0)  # cfat: rounds accepted on the floors alone
    rule: Literal["cfat", "calibrated"] = "calibrated"  # the acceptance rule enforced
    shadow_rules: tuple[Literal["cfat", "calibrated"], ...] = ()  # judged and recorded only
    window: int = Field(5, ge=1)  # calibrated: accepted models whose median is the reference
    history: int = Field(20, ge=1)  # calibrated: accepted models the spread is learned from
    spread_factor: float = Field(2.0, gt=0)  # calibrated: tolerance = factor x spread
    acc_ratio_floor: float = Field(0.5, gt=0, le=1)  # calibrated: loosest accuracy ratio
    loss_factor_max: float = Field(4.0, ge=1)  # calibrated: loosest certified-loss growth
    loss_ceiling: float = Field(2.0, ge=0)  # calibrated: x the round-0 model's loss; 0 = off
    min_clean_acc: float = Field(0.0, ge=0, le=1)
    min_pgd_acc: float = Field(0.0, ge=0, le=1)
    min_cert_acc: float = Field(0.0, ge=0, le=1)
    method: Literal["zonotope", "interval"] = "zonotope"
    sound_fp: bool = False  # account for float32 rounding (slower, float64)
    budget_mb: int = Field(256, ge=1)  # certifier working memory per chunk
    batch_size: int = Field(500, ge=1)  # PGD validation batch (a block of the pool scheduler)
    scheduler: Literal["pool", "serial"] = "pool"  # pool: workers; serial: one pass (the old way)
    workers: int = Field(2, ge=1)  # pool: threads, each running torch with one thread
    early_verdict: bool = True  # pool: stop measuring once the verdict is known (no shadow rules)
    early_delta: float = Field(1e-3, gt=0, lt=1)  # error bound of the sequential PGD verdict
    init_state: str = ""  # JSON of a gate's state_dict() to continue from ("" -> measure round 0)

    @field_validator("l_crt", mode="before")
    @classmethod
    def _radii(cls, v: Any) -> tuple[float, ...]:
        return _positive_radii(v, allow_empty=False)

    @field_validator("metrics", "shadow_rules", mode="before")
    @classmethod
    def _name_list(cls, v: Any) -> Any:
        return tuple(p.strip() for p in v.split(",") if p.strip()) if isinstance(v, str) else v


class RunConfig(_Section):
    """Everything one run needs; built once by the server and once per client process."""

    seed: int = Field(0, ge=0)
    num_rounds: int = Field(3, ge=1)
    output_dir: str = "runs"
    run_name: str = ""  # "" -> a timestamp
    resume_from: str = ""  # a run directory to continue from its last checkpoint; "" -> fresh
    init_checkpoint: str = ""  # start from this checkpoint's model (server/run_store.py format)
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    agg: AggregationConfig = AggregationConfig()
    eval: EvalConfig = EvalConfig()
    roles: RolesConfig = RolesConfig()
    attack: AttackConfig = AttackConfig()
    fl_wbc: FLWBCConfig = FLWBCConfig()
    dp: DPConfig = DPConfig()
    gate: GateConfig = GateConfig()
    crfl: CRFLConfig = CRFLConfig()

    @classmethod
    def from_flat(cls, flat: Mapping[str, Any]) -> RunConfig:
        """Validate Flower's flat dotted run config; raise ConfigError naming each bad key."""
        return _validate(cls, flat, "run config")

    def to_flat(self) -> dict[str, Any]:
        """The resolved config as flat dotted keys, as written into the run directory."""
        return _flatten(self.model_dump(by_alias=True))


class NodeConfig(_Section):
    """A SuperNode's own config: its data partition and, in deployment, its role."""

    partition_id: int = Field(ge=0)
    num_partitions: int = Field(ge=1)
    role: str = ""  # "" -> from the seeded simulation assignment (core/roles.py)

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
            if e["type"] == "extra_forbidden":
                lines.append(f"{what} key {key!r} is unknown")
            elif e["type"] == "missing":
                lines.append(f"{what} key {key!r} is required")
            else:
                lines.append(f"{what} key {key!r} = {e['input']!r}: {e['msg']}")
        raise ConfigError("; ".join(lines)) from None
