"""`convlens experiment NAME`: train an experiment's networks, or redraw its page (`--report DIR`)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from convlens.errors import ConvlensError

console = Console(soft_wrap=True)  # a result line holds a path: never broken inside it
err_console = Console(stderr=True)

_NAMES = "degradation, stack, sharing, pooling, first-filters"


def _depths(text: str | None) -> dict[str, object]:
    if text is None:
        return {}
    try:
        return {"depths": tuple(int(d) for d in text.split(","))}
    except ValueError:
        raise ConvlensError(f"--depths takes two depths such as 20,56, not {text!r}") from None


def register(app: typer.Typer) -> None:
    """Add `experiment` to `app`."""

    @app.command("experiment")
    def experiment(
        name: str = typer.Argument(..., help=f"The experiment: {_NAMES}."),
        data: str | None = typer.Option(
            None, "--data", "-d", help="Data set (default: the experiment's own)."
        ),
        data_dir: Path | None = typer.Option(
            None, "--data-dir", help="Folder holding the data sets (default: $CONVLENS_DATA)."
        ),
        budget: str = typer.Option(
            "small",
            "--budget",
            help="small: a CPU in minutes (fewer images and epochs); paper: the papers' recipes, "
            "for a GPU; tiny: a smoke test.",
        ),
        device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
        out: Path | None = typer.Option(
            None, "--out", "-o", help="Experiment directory (default: experiments/NAME-BUDGET)."
        ),
        resume: bool = typer.Option(
            False, "--resume", help="Continue the experiment in --out: every unfinished run."
        ),
        report_dir: Path | None = typer.Option(
            None,
            "--report",
            help="Redraw the page of the finished experiment in DIR; train nothing.",
        ),
        depths: str | None = typer.Option(
            None, "--depths", help="degradation only: shallow and deep depth, e.g. 20,56."
        ),
        seeds: int | None = typer.Option(
            None,
            "--seeds",
            min=2,
            help="Paired seeds per arm (default: the experiment's own, 5 or 3; the tiny budget 2).",
        ),
    ) -> None:
        """Measure one of the notes' claims: train the networks, write tables, verdicts and a page."""
        from convlens import experiments
        from convlens.cli import checks

        exp = experiments.get(name)
        checks.device(device)  # an unknown or missing device is refused before any folder is made
        if report_dir is not None:
            result = experiments.report(
                report_dir, name=exp.name, data_root=data_dir, console=err_console
            )
        else:
            settings = _depths(depths)
            if settings and exp.name != "degradation":
                raise ConvlensError("--depths applies to the degradation experiment only")
            if seeds is not None:
                settings["seeds"] = seeds
            result = experiments.run(
                exp.name,
                out=out or Path("experiments") / f"{exp.name}-{budget}",
                data=data,
                budget=budget,
                device=device,
                resume=resume,
                data_root=data_dir,
                settings=settings,
                console=err_console,
            )
        colours = {"held": "green", "contradicted": "red"}
        for v in result.verdicts:
            colour = colours.get(v.status, "yellow")
            console.print(f"[{colour}]{v.status}[/]: {v.claim}", highlight=False)
            console.print(f"  [dim]{v.evidence}[/]", highlight=False)
        console.print(f"page: {result.page}")
