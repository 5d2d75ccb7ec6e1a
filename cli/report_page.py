"""An experiment's report: `report.md` (the tables) and `report.html` (the tables, the plots,
the settings and every deviation from the paper, on one self-contained page).

The results table has one row per arm and, per outcome, our value (mean +- std over seeds)
beside the paper's where the scenario types one in (`[[paper.rows]]`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from cli import html_page as h
from cli import report_plots as plots
from cli.outcomes import RunRecord, label, parse_outcome
from cli.results import ArmResult, Stat
from cli.scenario import Arm, Plan

MAX_CURVE_ARMS = 16  # per-arm figures beyond this many arms would bury the page


def format_value(spec: str, value: float | str | None) -> str:
    """A number as the report prints it: losses and seconds to 4 significant digits, counts
    whole, rates to 3 decimals; the paper's strings as they are.

    >>> format_value("final:cert_loss@0.1", 8500.0), format_value("final:clean_acc", 0.98781)
    ('8500', '0.988')
    >>> format_value("mitigation-rounds", math.inf)
    'not mitigated'
    """
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if math.isinf(value):
        return "not mitigated" if spec == "mitigation-rounds" else str(value)
    if math.isnan(value):
        return "nan"
    o = parse_outcome(spec)
    if "loss" in o.arg or o.kind.endswith("-s") or o.kind == "crfl-median-radius":
        return f"{value:.4g}"
    if o.kind in ("attack-rounds", "benign-skipped", "mitigation-rounds"):
        return f"{value:.1f}".removesuffix(".0")
    return f"{value:.3f}"


def format_stat(spec: str, stat: Stat | None) -> str:
    """Mean, and +- the std when there are several seeds."""
    if stat is None:
        return "-"
    text = format_value(spec, stat.mean)
    if stat.n > 1 and math.isfinite(stat.mean):
        text += f" ± {format_value(spec, stat.std)}"
    return text


def paper_value(plan: Plan, arm: Arm, spec: str) -> float | str | None:
    """The paper's number for `arm` and `spec`, from the first row whose arm it matches."""
    levels = dict(arm)
    for row in plan.scenario.paper.rows:
        if all(levels.get(a) == lv for a, lv in row.arm.items()) and spec in row.values:
            return row.values[spec]
    return None


def _paper_specs(plan: Plan) -> set[str]:
    return {spec for row in plan.scenario.paper.rows for spec in row.values}


def results_table(plan: Plan, arms: Sequence[ArmResult]) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the results table: per arm, each outcome beside the paper's."""
    with_paper = _paper_specs(plan)
    objectives = any(a.objective for a in arms)
    headers = ["arm", "seeds"] + (["objective metric"] if objectives else [])
    for spec in plan.scenario.report.table:
        headers.append(label(spec))
        if spec in with_paper:
            headers.append(f"{label(spec)} (paper)")
    rows = []
    for arm in arms:
        seeds = f"{len(arm.run_ids)}" + (f" ({len(arm.failed)} failed)" if arm.failed else "")
        row = [arm.label, seeds]
        if objectives:
            row.append(_objective_text(arm))
        for spec in plan.scenario.report.table:
            row.append(format_stat(spec, arm.outcomes.get(spec)))
            if spec in with_paper:
                row.append(format_value(spec, paper_value(plan, arm.arm, spec)))
        rows.append(row)
    return headers, rows


def is_wide(headers: Sequence[str], arms: Sequence[ArmResult]) -> bool:
    """Many outcomes over few arms read better turned: one row per outcome."""
    return len(headers) > 12 and len(arms) <= 6


def _objective_text(arm: ArmResult) -> str:
    if not arm.objective:
        return "-"
    return label(arm.objective) + (" (lower: attack worked)" if arm.success == "lower" else "")


def _paper_columns(plan: Plan, arms: Sequence[ArmResult]) -> list[int]:
    """The indices of the paper's columns in `results_table` (each right after its spec's)."""
    with_paper, cols = _paper_specs(plan), []
    j = 3 if any(a.objective for a in arms) else 2  # the first outcome column
    for spec in plan.scenario.report.table:
        if spec in with_paper:
            cols.append(j + 1)
        j += 2 if spec in with_paper else 1
    return cols


def settings_rows(plan: Plan) -> list[list[str]]:
    """The shared run-config overrides (with the quick ones), the job's parameters, the
    federation and the seeds."""
    s = plan.scenario
    config = dict(s.config) | (dict(s.quick.config) if plan.quick else {})
    rows = [[k, repr(v)] for k, v in sorted(config.items()) if k != "seed"]
    job = dict(s.job_params) | (dict(s.quick.job) if plan.quick else {})
    rows += [[f"job: {k}", repr(v)] for k, v in sorted(job.items())]
    if s.job == "federated":
        rows.append(["virtual clients (num-supernodes)", str(plan.federation.supernodes)])
        rows.append(["ClientApps at once", str(plan.federation.concurrent)])
    rows.append(["seeds", ", ".join(map(str, plan.seeds))])
    return rows


def arm_rows(plan: Plan) -> list[list[str]]:
    """Each level and the overrides it adds."""
    rows = []
    for axis in plan.scenario.axes:
        for level in axis.levels:
            changes = ", ".join(f"{k}={v!r}" for k, v in {**level.config, **level.job}.items())
            rows.append([axis.label or axis.name, level.title, changes or "(none)"])
    return rows


def run_rows(plan: Plan, run_status: Mapping[str, Mapping[str, Any]]) -> list[list[str]]:
    """One row per run: id, status, wall time."""
    rows = []
    for run in plan.runs:
        st = run_status.get(run.run_id, {})
        wall = st.get("wall_s")
        rows.append([run.run_id, str(st.get("status", "not run")),
                     "-" if wall is None else f"{wall:.0f}"])  # fmt: skip
    return rows


def _header_lines(plan: Plan) -> list[str]:
    paper = plan.scenario.paper
    source = f", {paper.source}" if paper.source else ""
    return [plan.scenario.summary, f"Paper: {paper.citation}{source}"]


def paper_statements(plan: Plan) -> list[str]:
    """What the paper states without numbers, then the notes on its typed-in numbers."""
    s = plan.scenario
    notes = []
    for row in s.paper.rows:
        if row.note:
            arm = " / ".join(s.axis(a).level(lv).title for a, lv in row.arm.items())
            notes.append(f"{arm}: {row.note}")
    return [*s.paper.findings, *notes]


def _quick_warning(plan: Plan) -> str:
    note = plan.scenario.quick.note
    return (
        "Quick run (--quick): sized for CI, far below the paper's scale; its numbers check the "
        "pipeline, they do not reproduce the paper." + (f" {note}" if note else "")
    )


def experiment_markdown(
    plan: Plan,
    arms: Sequence[ArmResult],
    run_status: Mapping[str, Mapping[str, Any]],
    records: Mapping[str, RunRecord] | None = None,
) -> str:
    """report.md: the same tables as the HTML page, without the plots."""
    s = plan.scenario
    out = [f"# {s.title}", "", *(f"{line}  " for line in _header_lines(plan)), ""]
    if plan.quick:
        out += [f"> {_quick_warning(plan)}", ""]
    if records is not None and quiet_attackers(records):
        out += [f"> Malicious clients but no attack in: {', '.join(quiet_attackers(records))}", ""]
    headers, rows = results_table(plan, arms)
    if is_wide(headers, arms):
        headers, rows = h.transpose(headers, rows)
    out += ["## Results", "", h.markdown_table(headers, rows), ""]
    if paper_statements(plan):
        out += ["## What the paper states", "", *(f"- {f}" for f in paper_statements(plan)), ""]
    out += ["## Deviations from the paper", "", *(f"- {d}" for d in s.deviations), ""]
    out += ["## Settings", "", h.markdown_table(["key", "value"], settings_rows(plan)), ""]
    out += ["### Arms", "", h.markdown_table(["axis", "level", "overrides"], arm_rows(plan)), ""]
    out += ["## Runs", "", h.markdown_table(["run", "status", "wall (s)"],
                                            run_rows(plan, run_status)), ""]  # fmt: skip
    return "\n".join(out)


def _first_runs(
    plan: Plan, arms: Sequence[ArmResult], records: Mapping[str, RunRecord]
) -> dict[Arm, RunRecord]:
    return {a.arm: records[a.run_ids[0]] for a in arms if a.run_ids}


def _levels_in_plan(plan: Plan, axis_index: int) -> list[str]:
    return list(dict.fromkeys(arm[axis_index][1] for arm in plan.arms))


def _heatmaps(plan: Plan, arms: Sequence[ArmResult]) -> list[str]:
    s = plan.scenario
    row_axis, col_axis = s.axes[0], s.axes[1]
    row_names, col_names = _levels_in_plan(plan, 0), _levels_in_plan(plan, 1)
    by_arm = {a.arm: a for a in arms}
    figures = []
    for spec in s.report.heatmaps:
        color, text = [], []
        for rn in row_names:
            crow, trow = [], []
            for cn in col_names:
                arm = by_arm.get(((row_axis.name, rn), (col_axis.name, cn)))
                stat = arm.outcomes.get(spec) if arm else None
                shown = arm.objective if spec == "objective" and arm else spec
                trow.append(format_value(shown, stat.mean) if stat else "")
                value = stat.mean if stat and math.isfinite(stat.mean) else None
                if value is not None and spec == "objective" and arm.success == "lower":
                    value = 1.0 - value
                crow.append(value)
            color.append(crow)
            text.append(trow)
        row_labels = []
        for rn in row_names:
            level = row_axis.level(rn)
            row_labels.append(level.title + (f" [{label(level.objective)}]" if spec ==
                                             "objective" and level.objective else ""))  # fmt: skip
        col_labels = [col_axis.level(cn).title for cn in col_names]
        if spec == "objective":
            title = "attack objective (colour: 1 = the attack reached its goal)"
            uri = plots.heatmap(row_labels, col_labels, color, text, title, "attack success")
        else:
            present = [v for row in color for v in row if v is not None]
            vmin = min([0.0, *present])
            vmax = max([1.0 if all(v <= 1 for v in present) else 0.0, *present])
            uri = plots.heatmap(row_labels, col_labels, color, text, label(spec), label(spec),
                                vmin, vmax)  # fmt: skip
        figures.append(h.figure(uri, f"{label(spec)}: {row_axis.name} x {col_axis.name}"))
    return figures


def _lines(plan: Plan, arms: Sequence[ArmResult]) -> list[str]:
    s = plan.scenario
    if not s.report.lines:
        return []
    first = s.axes[0]
    xs = _levels_in_plan(plan, 0)
    series: dict[str, list[tuple[float, float] | None]] = {}
    for arm in arms:
        rest = " / ".join(s.axis(a).level(lv).title for a, lv in arm.arm[1:])
        for spec in s.report.lines:
            name = label(spec) + (f" ({rest})" if rest else "")
            points = series.setdefault(name, [None] * len(xs))
            stat = arm.outcomes.get(spec)
            if stat is not None:
                points[xs.index(arm.arm[0][1])] = (stat.mean, stat.std)
    titles = [first.level(x).title for x in xs]
    uri = plots.outcome_lines(titles, series, f"outcomes against {first.label or first.name}",
                              first.label or first.name)  # fmt: skip
    return [h.figure(uri, f"{', '.join(map(label, s.report.lines))} by {first.name}")]


def _bars(plan: Plan, arms: Sequence[ArmResult]) -> list[str]:
    specs = plan.scenario.report.bars
    if not specs:
        return []
    ours = [[(a.outcomes.get(sp) or Stat(math.nan, 0, 0, ())).mean for sp in specs] for a in arms]
    ours = [[None if math.isnan(v) else v for v in row] for row in ours]
    paper = [[_number(paper_value(plan, a.arm, sp)) for sp in specs] for a in arms]
    title = "ours (bars) and the paper's (diamonds)"
    uri = plots.outcome_bars([a.label for a in arms], [label(sp) for sp in specs], ours, paper,
                             title, plan.scenario.report.bars_log)  # fmt: skip
    return [h.figure(uri, ", ".join(map(label, specs)) + " per arm")]


def _number(value: float | str | None) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _curves(plan: Plan, arms: Sequence[ArmResult], records: Mapping[str, RunRecord]) -> list[str]:
    r = plan.scenario.report
    firsts = _first_runs(plan, arms, records)
    figures = []
    if (r.curves or r.log_curves) and len(firsts) > MAX_CURVE_ARMS:
        figures.append(h.para(f"Per-arm curves left out: {len(firsts)} arms; each run's own "
                              "report (certfl report RUN_DIR) has them."))  # fmt: skip
    elif r.curves or r.log_curves:
        for arm, run in firsts.items():
            uri = plots.round_curves(run, r.curves, r.log_curves, plan.label(arm))
            if uri:
                figures.append(h.figure(uri, f"{plan.label(arm)} ({run.run_dir.name}): per "
                                        "round; red dashed = attack round (ground truth), grey "
                                        "band = skipped round"))  # fmt: skip
    for metric in r.compare:
        groups: dict[str, dict[str, RunRecord]] = {}
        for arm, run in firsts.items():
            group = plan.scenario.axis(arm[0][0]).level(arm[0][1]).title if len(arm) > 1 else ""
            name = " / ".join(plan.scenario.axis(a).level(lv).title for a, lv in arm[1:]) or \
                plan.label(arm)  # fmt: skip
            groups.setdefault(group, {})[name] = run
        for group, runs in groups.items():
            title = f"{metric}" + (f": {group}" if group else "")
            uri = plots.compare_curves(runs, metric, title)
            if uri:
                figures.append(h.figure(uri, f"{title}, one line per arm (first seed)"))
    if "crfl-certify" in plan.scenario.post:
        runs = {plan.label(arm): run for arm, run in firsts.items()}
        uri = plots.crfl_radius_curves(runs, "CRFL certified accuracy against radius")
        if uri:
            figures.append(h.figure(uri, "certified accuracy of the smoothed model at each "
                                    "radius (clean test points)"))  # fmt: skip
    return figures


def quiet_attackers(records: Mapping[str, RunRecord]) -> list[str]:
    """Runs with malicious clients whose ground truth records no attack at all."""
    return [
        run_id for run_id, run in records.items()
        if run.config.get("roles.malicious-fraction", 0) > 0 and not run.attack_rounds
    ]  # fmt: skip


def experiment_html(
    plan: Plan,
    arms: Sequence[ArmResult],
    records: Mapping[str, RunRecord],
    run_status: Mapping[str, Mapping[str, Any]],
) -> str:
    """report.html: one page, every plot embedded."""
    s = plan.scenario
    body = [f"<h1>{h.esc(s.title)}</h1>", *(h.para(line) for line in _header_lines(plan))]
    if plan.quick:
        body.append(h.para(_quick_warning(plan), "warn"))
    silent = quiet_attackers(records)
    if silent:
        body.append(h.para(f"Malicious clients but no attack in: {', '.join(silent)} (the ground "
                           "truth records none: were roles.min-colluders of them ever sampled "
                           "together inside the attack window?)", "warn"))  # fmt: skip
    failed = [r for r, st in run_status.items() if st.get("status") == "failed"]
    if failed:
        body.append(h.para(f"{len(failed)} run(s) did not finish: {', '.join(failed)}; their "
                           "logs are under logs/.", "warn"))  # fmt: skip
    headers, rows = results_table(plan, arms)
    if is_wide(headers, arms):
        headers, rows = h.transpose(headers, rows)
        paper_rows = [i for i, row in enumerate(rows) if row[0].endswith("(paper)")]
        results = [h.table(headers, rows, numeric_from=1, paper_rows=paper_rows)]
    else:
        results = [h.table(headers, rows, paper_columns=_paper_columns(plan, arms))]
    if s.paper.rows:
        results.append(h.para(f"Shaded: the paper's numbers ({s.paper.source}), typed "
                              "in from the paper.", "note"))  # fmt: skip
    body.append(h.section("Results: ours beside the paper's", *results))
    if paper_statements(plan):
        body.append(h.section("What the paper states", h.bullets(paper_statements(plan))))
    heatmaps = _heatmaps(plan, arms) if s.report.heatmaps else []
    figures = _bars(plan, arms) + heatmaps + _lines(plan, arms) + _curves(plan, arms, records)
    if figures:
        body.append(h.section("Plots", *figures))
    body.append(h.section("Deviations from the paper", h.bullets(s.deviations)))
    body.append(h.section(
        "Settings",
        h.table(["key", "value"], settings_rows(plan)),
        "<h3>Arms</h3>",
        h.table(["axis", "level", "overrides"], arm_rows(plan), numeric_from=99),
    ))  # fmt: skip
    run_table = [
        [h.link(f"runs/{row[0]}/report.html", row[0]) if row[1] == "done" else h.esc(row[0]),
         *map(h.esc, row[1:])]
        for row in run_rows(plan, run_status)
    ]  # fmt: skip
    body.append(h.section("Runs", _raw_table(["run", "status", "wall (s)"], run_table)))
    return h.page(s.title, body)


def _raw_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A table whose cells are already HTML (links)."""
    head = "".join(f"<th>{h.esc(x)}</th>" for x in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"
