"""What a person watching a training sees: a Rich progress bar per epoch and one line per epoch.

Also the optional TensorBoard scalars (only when `torch.utils.tensorboard` imports). Only rank 0
reports; other ranks get a reporter that does nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class Reporter:
    """Progress bar, per-epoch summary lines and TensorBoard scalars for one training run."""

    def __init__(
        self,
        *,
        enabled: bool = True,
        console: Console | None = None,
        epochs: int = 1,
        tensorboard_dir: Path | None = None,
    ) -> None:
        self.enabled = enabled
        self.console = console or Console(stderr=True)
        self.epochs = epochs
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._tb: Any = None
        if enabled and tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                pass
            else:
                self._tb = SummaryWriter(log_dir=str(tensorboard_dir))

    def print(self, message: str) -> None:
        """One line for the person running the training (rank 0 only)."""
        if self.enabled:
            self.console.print(message, highlight=False, soft_wrap=True)

    def start_epoch(self, epoch: int, batches: int, done: int = 0) -> None:
        """Open a transient bar for epoch `epoch` (0-based) of `batches` batches, `done` already run."""
        if not self.enabled or not self.console.is_terminal:
            return  # a bar in a log file is noise; the per-epoch lines say enough
        # Fixed text takes ~60 columns ("epoch 10/10 1234/1234 loss 0.1234 acc  95.00% 12,345 img/s
        # 0:01:02 ETA 0:00:10"); the bar gets what is left, so nothing is cut at 80 columns.
        bar_width = max(5, min(40, self.console.width - 64))
        self._progress = Progress(
            TextColumn(f"epoch {epoch + 1}/{self.epochs}"),
            BarColumn(bar_width=bar_width),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self._progress.start()
        # No loss or accuracy until the first batches are in (not "loss nan acc 0.00%").
        self._task = self._progress.add_task("train", total=batches, completed=done, stats="")

    def update(self, done: int, *, loss: float, acc: float, images_per_s: float) -> None:
        """Move the bar to `done` batches with the running loss and accuracy of the epoch."""
        if self._progress is not None and self._task is not None:
            stats = f"loss {loss:.4f} acc {acc:6.2%} {images_per_s:>6,.0f} img/s"
            self._progress.update(self._task, completed=done, stats=stats)

    def end_epoch(self, row: dict[str, Any]) -> None:
        """Close the bar and print the epoch's summary line; log its scalars."""
        self._stop_bar()
        if not self.enabled:
            return
        self.console.print(
            f"epoch {row['epoch'] + 1:>3}/{self.epochs}  "
            f"train loss {row['train_loss']:.4f} acc {row['train_acc']:6.2%}  "
            f"test loss {row['test_loss']:.4f} acc {row['test_acc']:6.2%}  "
            f"lr {row['lr']:.3g}  {row['images_per_s']:,.0f} img/s  {row['seconds']:.1f} s",
            highlight=False,
            soft_wrap=True,
        )
        if self._tb is not None:
            for key in ("train_loss", "train_acc", "test_loss", "test_acc", "lr", "images_per_s"):
                self._tb.add_scalar(key, row[key], row["epoch"] + 1)
            self._tb.flush()

    def _stop_bar(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
            self._task = None

    def close(self) -> None:
        """Release the bar and the TensorBoard writer (safe to call twice)."""
        self._stop_bar()
        if self._tb is not None:
            self._tb.close()
            self._tb = None
