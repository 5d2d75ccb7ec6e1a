"""Scenario files: every shipped one loads, plans and yields run configs the app accepts; a bad
one fails before anything runs, naming the file and the key; overrides stack as documented; the
run config is validated as `certfl simulate` validates it (cli/run_config.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli.scenario import (
    ScenarioError,
    load_scenario,
    plan,
    scenario_names,
    validate_plan,
)

SHIPPED = scenario_names()
REQUIRED = {"cfat-table1", "cfat-fl", "cfat-fl-cifar10", "cfat-adaptive", "aru", "tails",
            "fl-wbc", "crfl", "matrix"}  # fmt: skip

MINIMAL = """
title = "t"
summary = "s"
deviations = ["d"]
[config]
"num-rounds" = 2
[[axes]]
name = "defense"
[[axes.levels]]
name = "mean"
config = { "agg.rule" = "mean" }
[[axes.levels]]
name = "median"
config = { "agg.rule" = "median", "num-rounds" = 5 }
[[axes]]
name = "attack"
[[axes.levels]]
name = "none"
[[axes.levels]]
name = "sign-flip"
config = { "roles.attack" = "sign-flip", "roles.malicious-fraction" = 0.2 }
[paper]
citation = "c"
[[paper.rows]]
arm = { defense = "median" }
values = { "final:clean_acc" = 0.9 }
[report]
table = ["final:clean_acc", "attacks-blocked"]
[quick]
seeds = 1
levels = { attack = ["sign-flip"] }
config = { "num-rounds" = 1, "roles.malicious-fraction" = 0.5 }
level-config = { median = { "agg.beta" = 0.1 } }
"""


def write(tmp_path: Path, text: str, name: str = "demo") -> Path:
    (tmp_path / f"{name}.toml").write_text(text)
    return tmp_path


def test_every_required_scenario_ships() -> None:
    assert set(SHIPPED) >= REQUIRED


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_scenario_plans_valid_runs_full_and_quick(name: str) -> None:
    scenario = load_scenario(name)
    assert scenario.deviations and scenario.paper.citation and scenario.summary
    full, quick = plan(scenario), plan(scenario, quick=True)
    configs = validate_plan(full) | validate_plan(quick)
    assert len(quick.runs) <= len(full.runs)
    assert len({r.run_id for r in full.runs}) == len(full.runs)  # ids name distinct runs
    assert all(c.num_rounds >= 1 for c in configs.values())


def test_overrides_stack_scenario_quick_level_then_quick_level_config(tmp_path: Path) -> None:
    s = load_scenario("demo", write(tmp_path, MINIMAL))
    full = plan(s, seeds=2)
    assert [r.run_id for r in full.runs][:3] == ["mean__none__seed0", "mean__none__seed1",
                                                 "mean__sign-flip__seed0"]  # fmt: skip
    assert len(full.runs) == 8 and full.seeds == (0, 1)
    median = next(r for r in full.runs if r.run_id == "median__none__seed1")
    assert median.overrides == {"num-rounds": 5, "agg.rule": "median", "seed": 1}
    quick = plan(s, quick=True)
    assert [r.run_id for r in quick.runs] == ["mean__sign-flip__seed0", "median__sign-flip__seed0"]
    q_mean, q_median = quick.runs
    assert q_mean.overrides["num-rounds"] == 1  # quick over the scenario
    assert q_mean.overrides["roles.malicious-fraction"] == 0.2  # the level over quick
    assert q_median.overrides["num-rounds"] == 5 and q_median.overrides["agg.beta"] == 0.1


def test_exclude_removes_arms(tmp_path: Path) -> None:
    text = MINIMAL.replace('title = "t"', 'title = "t"\nexclude = [{ defense = "median", '
                           'attack = "none" }]')  # fmt: skip
    arms = plan(load_scenario("demo", write(tmp_path, text))).arms
    assert (("defense", "median"), ("attack", "none")) not in arms and len(arms) == 3


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('summary = "s"', 'summary = "s"\ncolour = 1'), "scenario key 'colour' is unknown"),
        (('defense = "median" }', 'defense = "krum" }'), "axis 'defense' has no level 'krum'"),
        (('"final:clean_acc", "attacks', '"last:clean_acc", "attacks'), "reducer 'last' unknown"),
        (('deviations = ["d"]', "deviations = []"), "key 'deviations'"),
        (('attack = ["sign-flip"]', 'attack = ["ipm"]'), "has no level 'ipm'"),
    ],
)
def test_a_bad_scenario_fails_naming_the_key(tmp_path: Path, change: tuple, message: str) -> None:
    directory = write(tmp_path, MINIMAL.replace(*change))
    with pytest.raises(ScenarioError, match="demo.toml") as err:
        load_scenario("demo", directory)
    assert message in str(err.value)


def test_a_run_config_the_app_rejects_fails_before_running(tmp_path: Path) -> None:
    bad_value = MINIMAL.replace('"agg.rule" = "median",', '"agg.rule" = "medain",')
    p = plan(load_scenario("demo", write(tmp_path, bad_value)))
    with pytest.raises(ScenarioError, match="run median__none__seed0: .*'agg.rule' = 'medain'"):
        validate_plan(p)
    unknown = MINIMAL.replace('"num-rounds" = 2', '"num-round" = 2')
    p = plan(load_scenario("demo", write(tmp_path, unknown)))
    with pytest.raises(ScenarioError, match="'num-round' unknown to the app"):
        validate_plan(p)
    no_policy = MINIMAL.replace('"roles.attack" = "sign-flip"', '"roles.attack" = "sign-flop"')
    p = plan(load_scenario("demo", write(tmp_path, no_policy)))
    with pytest.raises(ScenarioError, match="'roles.attack' = 'sign-flop': unknown policy"):
        validate_plan(p)
    # an attack key shared by every arm, though sign-flip's arm does not read it
    unread = MINIMAL.replace('"num-rounds" = 2', '"num-rounds" = 2\n"attack.distill-epochs" = 3')
    p = plan(load_scenario("demo", write(tmp_path, unread)))
    with pytest.raises(ScenarioError, match="run mean__sign-flip__seed0: .*'attack.distill-epochs"
                       "' = 3 is not read by policy 'sign-flip'"):  # fmt: skip
        validate_plan(p)


def test_missing_scenario_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="no scenario 'nope'.*known: demo"):
        load_scenario("nope", write(tmp_path, MINIMAL))
