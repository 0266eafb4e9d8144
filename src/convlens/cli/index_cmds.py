"""`convlens index build|list|delete`: the subject's streaming pass, and the cache that keeps it.

`build` takes a subject as `report` and `evaluate` do (a run directory, or `--model SPEC
[--weights] --images DIR`); a folder is streamed from disk, never loaded whole. Under
`torchrun --nproc-per-node N -m convlens.cli.main index build ...` the ranks split the pass and
rank 0 writes the index. The work is :mod:`convlens.index`; this module parses and prints.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from convlens.cli import checks
from convlens.cli import subject_options as so

console = Console(soft_wrap=True)  # result lines hold paths: never broken inside them

CACHE_HELP = "The index cache (default: $CONVLENS_CACHE/index, else ~/.cache/convlens/index)."


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return f"{n} B"


def register(app: typer.Typer) -> None:
    """Add the `index` group to `app`."""
    group = typer.Typer(
        help="The index: one streaming pass over a subject's images (predictions, features, "
        "each channel's top images), cached on disk and reused.",
        no_args_is_help=True,
    )
    app.add_typer(group, name="index")

    @group.command("build")
    def build(
        run_dir: Path | None = typer.Argument(
            None, help="A run directory (or name the model with --model and give --images)."
        ),
        model: str | None = so.model_option(),
        weights: str | None = so.weights_option(),
        images: Path | None = so.images_option(),
        classes: Path | None = so.classes_option(),
        download: bool = so.download_option(),
        data_dir: Path | None = typer.Option(
            None, "--data-dir", help="Folder holding a run's data set."
        ),
        layers: str | None = typer.Option(
            None,
            "--layers",
            help="Comma-separated layers whose channels get top images (default: the last "
            "convolution of each map size).",
        ),
        k: int = typer.Option(16, "-k", "--top", min=1, max=1000, help="Images per channel."),
        batch_size: int | None = typer.Option(
            None, "--batch-size", min=1, max=65536, help="Images per forward pass."
        ),
        workers: int | None = typer.Option(
            None, "--workers", min=0, max=64, help="Processes decoding the images."
        ),
        shard_size: int = typer.Option(
            1024,
            "--shard-size",
            min=1,
            max=1_000_000,
            help="Images per shard: the unit of resuming and of splitting between torchrun ranks.",
        ),
        cache_dir: Path | None = typer.Option(None, "--cache-dir", help=CACHE_HELP),
        device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    ) -> None:
        """Run the index pass over the subject's images (or reuse the cached index) and print its folder."""
        from convlens.index import build_index

        sub = so.open_cli_subject(
            run_dir, model=model, weights=weights, images=images, classes=classes,
            download=download, device=checks.device(device), data_dir=data_dir, in_memory=False,
        )  # fmt: skip
        names = [n.strip() for n in layers.split(",") if n.strip()] if layers else None
        shards: list[int] = []
        started = time.perf_counter()
        idx = build_index(
            sub, layers=names, k=k, cache_dir=cache_dir, batch_size=batch_size,
            num_workers=workers, progress=not quiet, shard_size=shard_size,
            on_shard=lambda done, total: shards.append(done),
        )  # fmt: skip
        if int(os.environ.get("RANK", "0")) != 0:
            return  # under torchrun only rank 0 prints
        secs = time.perf_counter() - started
        how = f"built in {secs:.1f} s ({idx.n / secs:,.0f} images/s)" if shards else "cached"
        skipped = f", {len(idx.skipped)} unreadable skipped" if idx.skipped else ""
        console.print(
            f"index of {sub.name} over {idx.n:,} images{skipped}, {how}: layers "
            f"{', '.join(idx.layers)}, k={idx.k}",
            highlight=False,
        )
        typer.echo(str(idx.path))

    @group.command("list")
    def list_(
        cache_dir: Path | None = typer.Option(None, "--cache-dir", help=CACHE_HELP),
        as_json: bool = typer.Option(False, "--json", help="Print the list as JSON."),
    ) -> None:
        """List the cached indexes: key, subject, images, layers, size, status."""
        from convlens.index import cache_root, list_indexes

        entries = list_indexes(cache_dir)
        rows: list[dict[str, Any]] = []
        for e in entries:
            m = e.manifest or {}
            rows.append({
                "key": e.key, "status": e.status, "reason": e.reason,
                "subject": m.get("subject"), "images": m.get("n"),
                "source": (m.get("source") or {}).get("name"),
                "layers": [x["name"] for x in m.get("layers", [])], "k": m.get("k"),
                "created": m.get("created"), "bytes": e.size_bytes, "path": str(e.path),
            })  # fmt: skip
        if as_json:
            typer.echo(json.dumps(rows, indent=2))
            return
        if not rows:
            console.print(f"no indexes in {cache_root(cache_dir)}", highlight=False)
            return
        table = Table(title=f"indexes in {cache_root(cache_dir)}")
        for col in ("key", "subject", "images", "source", "size", "status"):
            table.add_column(col, justify="right" if col in ("images", "size") else "left")
        for r in rows:
            status = r["status"] if r["status"] == "ok" else f"{r['status']}: {r['reason']}"
            table.add_row(
                r["key"], str(r["subject"] or "-"),
                f"{r['images']:,}" if r["images"] is not None else "-",
                str(r["source"] or "-"), _size(r["bytes"]), status,
            )  # fmt: skip
        console.print(table)

    @group.command("delete")
    def delete(
        keys: list[str] = typer.Argument(
            None, help="Keys (or unique key prefixes, or folders) of the indexes to delete."
        ),
        all_: bool = typer.Option(False, "--all", help="Delete every index in the cache."),
        cache_dir: Path | None = typer.Option(None, "--cache-dir", help=CACHE_HELP),
    ) -> None:
        """Delete cached indexes (by key, or --all)."""
        from convlens.index import delete_index, list_indexes

        if not keys and not all_:
            raise checks.UsageError("name the indexes to delete (their keys), or pass --all")
        if keys and all_:
            raise checks.UsageError("give keys or --all, not both")
        targets: list[str | Path] = (
            [e.path for e in list_indexes(cache_dir)] if all_ else list(keys)
        )
        for t in targets:
            typer.echo(f"deleted {delete_index(t, cache_dir)}")
