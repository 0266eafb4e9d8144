"""Run an experiment into a directory, resume it, and (re)draw its page.

Layout of an experiment directory::

    OUT/
      experiment.json   name, budget, data, settings and the planned runs (written first)
      runs/NAME/        one run directory per network (convlens.train.fit's own, resumable)
      results.json      the tables and verdicts (written with the page)
      experiment.html   the self-contained page

Each run checkpoints at the end of every epoch (and every few minutes within one), so a killed
experiment loses at most one epoch per run: ``resume=True`` continues every unfinished run from its
checkpoint and skips the finished ones.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from convlens.errors import ConvlensError, Interrupted
from convlens.experiments.common import (
    Context,
    Experiment,
    Findings,
    Plan,
    RunSpec,
    check_budget,
)
from convlens.experiments.stats import METHOD
from convlens.fileio import atomic_write_json, atomic_write_text
from convlens.train import Run, TrainConfig, fit, load_run
from convlens.train.run_dir import CHECKPOINT, RUN_JSON, WEIGHTS, read_run_json

EXPERIMENT_JSON = "experiment.json"
RESULTS_JSON = "results.json"
PAGE = "experiment.html"


@dataclass
class ExperimentResult:
    """A finished experiment: its findings (tables, verdicts), runs and the page written."""

    name: str
    out: Path
    budget: str
    data: str
    findings: Findings
    runs: dict[str, Run]
    page: Path

    @property
    def tables(self) -> list[Any]:
        """The measured tables (:class:`~convlens.experiments.common.Table`)."""
        return self.findings.tables

    @property
    def verdicts(self) -> list[Any]:
        """The claims' verdicts (:class:`~convlens.experiments.common.Verdict`)."""
        return self.findings.verdicts


def get(name: str) -> Experiment:
    """The experiment called `name` (``degradation``, ``stack``, ``sharing``, ...)."""
    from convlens.errors import did_you_mean
    from convlens.experiments import EXPERIMENTS

    if name not in EXPERIMENTS:
        raise ConvlensError(
            f"unknown experiment {name!r}.{did_you_mean(name, EXPERIMENTS)} "
            f"The experiments: {', '.join(EXPERIMENTS)}."
        )
    return EXPERIMENTS[name]


def _plan(exp: Experiment, budget: str, data: str, settings: dict[str, Any]) -> Plan:
    unknown = [k for k in settings if k not in exp.settings]
    if unknown:
        raise ConvlensError(
            f"experiment {exp.name} has no setting {unknown[0]!r}; "
            f"its settings: {', '.join(exp.settings) or 'none'}"
        )
    return exp.plan(budget, data, **{**exp.settings, **settings})


def _saved_plan(exp: Experiment, saved: dict[str, Any]) -> Plan:
    """The plan an experiment directory was started with (its runs' recipes as saved)."""
    current = _plan(exp, saved["budget"], saved["data"], saved["settings"])
    try:
        runs = [
            RunSpec(
                r["name"],
                r["label"],
                r["model"],
                r["options"],
                TrainConfig.from_dict(r["train"]),
                str(r.get("arm") or r["name"]),
                int(r.get("seed", r["train"].get("seed", 0))),
            )
            for r in saved["runs"]
        ]
    except (KeyError, TypeError) as e:
        raise ConvlensError(f"the runs listed in {EXPERIMENT_JSON} are incomplete ({e})") from None
    return Plan(
        runs=runs,
        budget_note=saved.get("budget_note", current.budget_note),
        params=saved.get("params", current.params),
    )


def _run_state(run_dir: Path) -> str:
    """``complete``, ``started`` (a checkpoint to resume from) or ``new``."""
    weights, described = (run_dir / WEIGHTS).is_file(), (run_dir / RUN_JSON).is_file()
    if weights and described and read_run_json(run_dir).get("status") == "complete":
        return "complete"
    if (run_dir / CHECKPOINT).is_file():
        return "started"
    return "new"


def run(
    name: str,
    *,
    out: str | Path,
    data: str | None = None,
    budget: str = "small",
    device: str = "auto",
    resume: bool = False,
    data_root: str | Path | None = None,
    settings: dict[str, Any] | None = None,
    progress: bool = True,
    console: Console | None = None,
) -> ExperimentResult:
    """Train every network of experiment `name` into `out`, then write its page.

    Args:
        name: ``degradation``, ``stack``, ``sharing``, ``pooling`` or ``first-filters``.
        out: the experiment directory (created).
        data: data set (default: the experiment's own).
        budget: ``small`` (a CPU, minutes), ``paper`` (the papers' recipes, for a GPU) or ``tiny``.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        resume: continue the experiment in `out`: unfinished runs from their checkpoints.
        data_root: folder of the data sets (default: CONVLENS_DATA).
        settings: the experiment's own settings (e.g. ``{"depths": (20, 56)}`` for degradation).
        progress: show each run's progress.
        console: where to print (default: stderr).

    Returns:
        The :class:`ExperimentResult` (tables, verdicts, runs, the page's path).

    Raises:
        ConvlensError: unknown experiment, budget, setting or data set; `out` holds another
            experiment, or this one without `resume`.
    """
    exp = get(name)
    check_budget(budget)
    out = Path(out)
    console = console or Console(stderr=True)
    settings = dict(settings or {})
    saved_file = out / EXPERIMENT_JSON
    if saved_file.is_file():
        saved = _read_experiment_json(out)
        if not resume:
            raise ConvlensError(
                f"{out} already holds the {saved['name']} experiment; pass --resume to continue "
                "it, or choose another --out"
            )
        if saved["name"] != name:
            raise ConvlensError(f"{out} holds the {saved['name']} experiment, not {name}")
        given = {"budget": budget, "data": data or saved["data"], **settings}
        have = {"budget": saved["budget"], "data": saved["data"], **saved["settings"]}
        differ = {k: v for k, v in given.items() if k in have and _jsonable(v) != have[k]}
        if differ:
            raise ConvlensError(
                f"--resume continues {out} as it was started ({have}); these differ: {differ}"
            )
        data, settings = saved["data"], saved["settings"]
    elif resume:
        raise ConvlensError(
            f"nothing to resume: {out} holds no experiment (no {EXPERIMENT_JSON}); start one "
            f"with `convlens experiment {name} --out {out}`"
        )
    elif out.exists() and any(out.iterdir()):
        raise ConvlensError(f"{out} exists and is not empty; choose another --out")
    data = data or exp.default_data
    exp.check_data(data)
    # A resumed experiment trains and reads what it was started with, whatever the code says now.
    plan = _saved_plan(exp, saved) if saved_file.is_file() else _plan(exp, budget, data, settings)
    root = None if data_root is None else str(data_root)
    atomic_write_json(
        saved_file,
        {
            "format": 1,
            "name": name,
            "budget": budget,
            "data": data,
            "data_root": root,
            "settings": {k: _jsonable(v) for k, v in {**exp.settings, **settings}.items()},
            "budget_note": plan.budget_note,
            "params": plan.params,
            "runs": [s.to_dict() for s in plan.runs],
        },
    )
    for i, spec in enumerate(plan.runs, 1):
        run_dir = out / "runs" / spec.name
        state = _run_state(run_dir)
        head = f"[bold][{i}/{len(plan.runs)}] {exp.name}: {spec.label}[/bold] ({spec.model})"
        if state == "complete":
            console.print(f"{head}: already complete")
            continue
        console.print(f"{head}{': resuming' if state == 'started' else ''}")
        t0 = time.perf_counter()
        try:
            fit(
                spec.model,
                data,
                out=run_dir,
                config=spec.config.replace(device=device),
                model_options=spec.options,
                data_root=root,
                resume=state == "started",
                progress=progress,
                console=console,
            )
        except KeyboardInterrupt as e:
            # The run saved its checkpoint; the finished runs are complete on disk. The CLI prints
            # an Interrupted's message as its last line: make it the experiment's resume command.
            message = (
                f"experiment {name} stopped at run {i} of {len(plan.runs)}; nothing finished is "
                f"lost. Continue it with: convlens experiment {name} --budget {budget} "
                f"--out {out} --resume"
            )
            if isinstance(e, Interrupted):
                e.message = message  # printed by the CLI (main) as its one line
            else:
                console.print(f"[bold yellow]{message}[/]", highlight=False)
            raise
        console.print(f"{head}: done in {time.perf_counter() - t0:.0f} s")
    return report(out, data_root=root, console=console if progress else None)


def report(
    out: str | Path,
    *,
    name: str | None = None,
    data_root: str | Path | None = None,
    console: Console | None = None,
) -> ExperimentResult:
    """Analyse the finished runs of the experiment in `out` and (re)write its page and results.

    Args:
        out: the experiment directory.
        name: when given, the experiment `out` must hold.
        data_root: folder of the data sets (default: the one the experiment was run with).
        console: where to print (None: silent).

    Raises:
        ConvlensError: `out` is not an experiment directory (or of another experiment than
            `name`), or some of its runs are unfinished.
    """
    from convlens import __version__
    from convlens.render.experiment import experiment_page

    out = Path(out)
    saved = _read_experiment_json(out)
    exp = get(saved["name"])
    if name is not None and get(name).name != exp.name:
        raise ConvlensError(f"{out} holds the {exp.name} experiment, not {name}")
    plan = _saved_plan(exp, saved)
    unfinished = [s.name for s in plan.runs if _run_state(out / "runs" / s.name) != "complete"]
    if unfinished:
        raise ConvlensError(
            f"{out}: runs {', '.join(unfinished)} are not finished; continue them with "
            f"`convlens experiment {exp.name} --out {out} --resume`"
        )
    root = data_root if data_root is not None else saved.get("data_root")
    runs = {s.name: load_run(out / "runs" / s.name) for s in plan.runs}
    ctx = Context(
        out=out,
        name=exp.name,
        budget=saved["budget"],
        data=saved["data"],
        plan=plan,
        runs=runs,
        data_root=None if root is None else str(root),
    )
    if console is not None:
        console.print(f"analysing {exp.name} ({len(runs)} runs) ...")
    findings = exp.analyse(ctx)
    if ctx.smoke:  # the tiny budget checks that everything runs; it decides nothing
        findings.verdicts = [v.smoke() for v in findings.verdicts]
    html = experiment_page(
        title=exp.title,
        claim=exp.claim,
        source=exp.source,
        facts=_facts(ctx),
        budget_note=plan.budget_note,
        verdicts=[v.to_dict() for v in findings.verdicts],
        tables=[t.to_dict() for t in findings.tables],
        pictures=[(p.png, p.caption, p.alt) for p in findings.pictures],
        notes=findings.notes,
        version=__version__,
    )
    page = out / PAGE
    atomic_write_text(page, html)
    atomic_write_json(
        out / RESULTS_JSON,
        {
            "name": exp.name,
            "budget": ctx.budget,
            "data": ctx.data,
            "budget_note": plan.budget_note,
            "seeds": ctx.seeds,
            "statistics": METHOD,
            "verdicts": [v.to_dict() for v in findings.verdicts],
            "tables": [t.to_dict() for t in findings.tables],
            "notes": findings.notes,
        },
    )
    return ExperimentResult(exp.name, out, ctx.budget, ctx.data, findings, runs, page)


def _facts(ctx: Context) -> list[tuple[str, str]]:
    devices = sorted({str(r.raw.get("device", "?")) for r in ctx.runs.values()})
    seconds = sum(float(r.raw.get("result", {}).get("elapsed_s") or 0.0) for r in ctx.runs.values())
    command = (
        f"convlens experiment {ctx.name} --data {ctx.data} --budget {ctx.budget} --out {ctx.out}"
    )
    return [
        ("experiment", ctx.name),
        ("data", ctx.data),
        ("budget", ctx.budget),
        ("arms", ", ".join(f"{ctx.label(a)} ({ctx.specs(a)[0].model})" for a in ctx.arms)),
        (
            "seeds",
            f"{len(ctx.seeds)} per arm ({', '.join(map(str, ctx.seeds))}); runs of one seed share "
            "the data order and the initialisation stream",
        ),
        ("statistics", f"{METHOD}; verdicts decided by the interval"),
        ("trained on", ", ".join(devices)),
        ("training time", f"{seconds / 60:.1f} min over {len(ctx.runs)} runs"),
        ("command", command),
    ]


def _read_experiment_json(out: Path) -> dict[str, Any]:
    f = out / EXPERIMENT_JSON
    if not f.is_file():
        raise ConvlensError(
            f"{out} is not an experiment directory (no {EXPERIMENT_JSON}); "
            "run one with `convlens experiment NAME --out DIR`"
        )
    try:
        raw = json.loads(f.read_text())
        raw["name"], raw["budget"], raw["data"], raw["settings"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ConvlensError(f"{f} is corrupt ({e})") from None
    return dict(raw)


def _jsonable(v: Any) -> Any:
    """Tuples as lists, so that settings compare equal after a JSON round trip."""
    return [_jsonable(x) for x in v] if isinstance(v, tuple | list) else v
