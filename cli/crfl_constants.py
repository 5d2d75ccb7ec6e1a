"""The constants of CRFL's certified radius for a finished run, each with a note saying where
from: `crfl.*` as the parsed config resolved them (a key left at 0 is derived from the run's
config when it is parsed), and tau_i from the run's round records when `crfl.local-iters` is 0."""

from __future__ import annotations

import math
from typing import Any

from certify.crfl import RadiusConstants, contraction
from core.config import ConfigError, RunConfig, check_crfl_attack_round, cross_section_defaults
from core.wire import NUM_EXAMPLES
from strategies.crfl import clip_threshold, server_sigma


def attack_round(cfg: RunConfig) -> int:
    """t_adv: `crfl.t-adv` (0 at parse: roles.attack-start-round); must lie in 1..num-rounds."""
    check_crfl_attack_round(cfg)
    return cfg.crfl.t_adv


def attack_window_warning(cfg: RunConfig) -> str:
    """A warning when the run's attack window is not one round: CRFL certifies a single one."""
    r = cfg.roles
    if r.attack_end_round == r.attack_start_round:
        return ""
    return (
        f"; WARNING: the attack window is rounds {r.attack_start_round}..{r.attack_end_round}, "
        "CRFL's certificate covers one attack round"
    )


def round_noise(t: int, cfg: RunConfig) -> float:
    """sigma_t as the certificate sees it: the server's noise, and sigma_T (smoothing) at T."""
    return cfg.crfl.sigma_test if t == cfg.num_rounds else server_sigma(t, cfg.num_rounds, cfg.crfl)


def client_examples(rounds: list[dict[str, Any]], t_adv: int) -> float | None:
    """The mean example count the clients reported in round t_adv (else any round), or None."""
    reported = [r for r in rounds if NUM_EXAMPLES in r.get("client", {})]
    at_t = [r for r in reported if r["round"] == t_adv]
    chosen = at_t or reported
    return float(chosen[0]["client"][NUM_EXAMPLES]) if chosen else None


def local_iterations(cfg: RunConfig, rounds: list[dict[str, Any]], t_adv: int) -> tuple[int, str]:
    """tau: `crfl.local-iters`, else local-epochs * ceil(client examples / batch-size).

    The one place `crfl.local-iters` = 0 is resolved: the clients' example counts exist only
    in the run's round records."""
    if cfg.crfl.local_iters:
        return cfg.crfl.local_iters, "crfl.local-iters"
    n = client_examples(rounds, t_adv)
    source = f"clients' mean num-examples in round {t_adv}"
    if n is None and cfg.data.max_client_samples:
        n, source = float(cfg.data.max_client_samples), "data.max-client-samples"
    if n is None:
        raise ConfigError(
            "run config key 'crfl.local-iters' = 0: the run records no client example counts "
            "and data.max-client-samples is 0; set crfl.local-iters"
        )
    t = cfg.train
    tau = t.local_epochs * math.ceil(n / t.batch_size)
    return tau, f"{t.local_epochs} epochs x ceil({n:g} / {t.batch_size}) ({source})"


def radius_constants(
    cfg: RunConfig, rounds: list[dict[str, Any]]
) -> tuple[RadiusConstants, dict[str, str]]:
    """The radius constants of the run and, per constant, a note on where its value came from
    (a derivation when the value is what the run's other keys give, else its `crfl.*` key)."""
    crfl, t_adv, k = cfg.crfl, attack_round(cfg), cfg.train.clients_per_round
    tau, tau_note = local_iterations(cfg, rounds, t_adv)
    rho_adv = clip_threshold(t_adv, crfl)
    after = range(t_adv + 1, cfg.num_rounds + 1)
    rhos = [clip_threshold(t, crfl) for t in after]
    sigmas = [round_noise(t, cfg) for t in after]
    constants = RadiusConstants(
        sigma_adv=round_noise(t_adv, cfg),
        lz=crfl.lz,
        n_attackers=crfl.n_attackers,
        agg_weight=crfl.agg_weight,
        gamma=crfl.gamma,
        local_iters=tau,
        lr=crfl.lr,
        poison_fraction=crfl.poison_fraction,
        contraction=contraction(rhos, sigmas),
    )
    derived = cross_section_defaults(cfg, cfg.attack)["crfl"]

    def note(name: str, derivation: str) -> str:
        return (
            derivation if getattr(crfl, name) == derived[name] else f"crfl.{name}".replace("_", "-")
        )

    mean_warning = "" if cfg.agg.rule == "mean" else (
        f"; WARNING: FedAvg's weight, agg.rule is {cfg.agg.rule!r}"
    )  # fmt: skip
    notes = {
        "t_adv": f"{t_adv} ({note('t_adv', 'roles.attack-start-round')}), "
        f"T = {cfg.num_rounds}{attack_window_warning(cfg)}",
        "sigma_adv": "crfl.sigma-test (t_adv = T)" if t_adv == cfg.num_rounds else "crfl.sigma",
        "lz": note("lz", f"sqrt(2 + 2 rho + rho^2), rho_t_adv = {rho_adv:g}"),
        "n_attackers": note("n_attackers", f"round(roles.malicious-fraction x {k})"),
        "agg_weight": note("agg_weight", f"1 / {k} clients per round{mean_warning}"),
        "gamma": note("gamma", "1 (no boosting)"),
        "local_iters": tau_note,
        "lr": note("lr", "train.lr"),
        "poison_fraction": note("poison_fraction", "attack.poison-fraction"),
        "contraction": f"rounds {t_adv + 1}..{cfg.num_rounds}" if after else "no round after t_adv",
    }
    return constants, notes
