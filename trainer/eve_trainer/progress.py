"""Progress for humans (a rich bar on a terminal, plain lines otherwise) and JSON lines
for machines (`progress=json`: one object per line on stdout). Rank 0 only."""

from __future__ import annotations

import json
import math
import sys
import time
from typing import IO, Any


class Progress:
    def __init__(self, mode: str, *, total_steps: int, enabled: bool = True, stream: IO[str] | None = None):
        self.stream = stream or sys.stdout
        tty = self.stream.isatty()
        if mode == "auto":
            mode = "bar" if tty else "line"
        elif mode == "bar" and not tty:
            mode = "line"
        self.mode = mode if enabled else "none"
        self.total_steps = total_steps
        self._bar: Any = None
        self._task: Any = None
        self._t0 = time.monotonic()
        self._first_step = 0

    def start(self, step: int) -> None:
        self._t0, self._first_step = time.monotonic(), step
        if self.mode == "bar":
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                     TimeRemainingColumn(), TextColumn("{task.fields[info]}"))
            self._task = self._bar.add_task("train", total=self.total_steps, completed=step, info="")
            self._bar.start()

    def eta_s(self, step: int) -> float:
        done = step - self._first_step
        if done <= 0:
            return math.nan
        return (time.monotonic() - self._t0) / done * (self.total_steps - step)

    def step(self, step: int, metrics: dict[str, float]) -> None:
        eta = self.eta_s(step)
        if self.mode == "json":
            self._json({"event": "step", "step": step, "total_steps": self.total_steps,
                        "eta_s": None if math.isnan(eta) else round(eta, 1), **metrics})
        elif self.mode == "line":
            self._line(f"step {step}/{self.total_steps} loss {metrics.get('loss', math.nan):.4f} "
                       f"lr {metrics.get('lr', math.nan):.3g} {metrics.get('samples_per_s', 0):.1f} samples/s "
                       f"{_throughput(metrics)}eta {_fmt_eta(eta)}")
        elif self.mode == "bar":
            info = (f"loss {metrics.get('loss', math.nan):.4f} {metrics.get('samples_per_s', 0):.1f} samples/s "
                    f"{_throughput(metrics)}").rstrip()
            self._bar.update(self._task, completed=step, info=info)

    def event(self, name: str, message: str, **fields: Any) -> None:
        """A notable moment (resumed, checkpoint saved, stopping, done)."""
        if self.mode == "json":
            self._json({"event": name, "message": message, **fields})
        elif self.mode == "bar" and self._bar is not None:
            self._bar.console.print(message)
        elif self.mode == "bar":  # before start(): no live bar yet
            self._line(message)
        elif self.mode == "line":
            self._line(message)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def _json(self, obj: dict[str, Any]) -> None:
        self.stream.write(json.dumps(obj, default=str) + "\n")
        self.stream.flush()

    def _line(self, text: str) -> None:
        self.stream.write(f"[eve-train] {text}\n")
        self.stream.flush()


def _throughput(metrics: dict[str, float]) -> str:
    """'1234 tok/s pad 12% MFU 41.0% ' from what is there (real tokens; MFU only on GPUs)."""
    out = ""
    if "tokens_per_s" in metrics:
        out += f"{metrics['tokens_per_s']:.0f} tok/s "
    if "padding_fraction" in metrics:
        out += f"pad {100 * metrics['padding_fraction']:.0f}% "
    if "mfu" in metrics:
        out += f"MFU {100 * metrics['mfu']:.1f}% "
    return out


def _fmt_eta(seconds: float) -> str:
    if math.isnan(seconds):
        return "-"
    minutes, sec = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{sec:02d}" if hours else f"{minutes}:{sec:02d}"
