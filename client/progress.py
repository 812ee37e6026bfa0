"""Upload progress as stages, each with its own elapsed time.

Receiving has a byte bar; converting, verifying and loading (seconds to minutes, no byte count) show a
spinner and their own clock instead of a bar frozen at 100 %. Nothing is drawn before the server's first
event, so an upload refused up front prints only its error line.
"""

from __future__ import annotations

from typing import Any

from kvserve.client.client import UploadProgress

STAGE_NAMES = {"RECEIVING": "receiving", "RECEIVED": "receiving", "CONVERTING": "converting", "VERIFYING": "verifying",
               "LOADING": "loading", "READY": "ready"}


class UploadView:
    """A context manager whose ``on_event`` is the ``progress`` callback of ``Client.upload``."""

    def __init__(self, console: Any, transient: bool = False) -> None:
        self.console = console
        self.transient = transient
        self._progress: Any = None
        self._task: Any = None
        self._stage = ""

    def __enter__(self) -> "UploadView":
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            if exc[0] is None and self._task is not None:
                self._finish()
            self._progress.stop()

    def _start(self) -> None:
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self._progress = Progress(SpinnerColumn(finished_text="[green]✓[/]"), TextColumn("{task.description:<11}"),
                                  BarColumn(bar_width=24), TextColumn("{task.fields[detail]}"), TimeElapsedColumn(),
                                  console=self.console, transient=self.transient)
        self._progress.start()

    def _finish(self) -> None:
        task = self._progress.tasks[self._task]
        total = task.total or 1
        self._progress.update(self._task, total=total, completed=total)
        self._progress.stop_task(self._task)

    def on_event(self, event: UploadProgress) -> None:
        if self._progress is None:
            self._start()
        name = STAGE_NAMES.get(event.stage, event.stage.lower())
        if name != self._stage:
            if self._task is not None:
                self._finish()
            self._stage = name
            if name == "ready":
                self._task = None
                return
            self._task = self._progress.add_task(name, total=None, detail="")
        if event.stage == "RECEIVING":
            self._progress.update(self._task, completed=event.bytes_received, total=event.bytes_total or None,
                                  detail=_size(event.bytes_received, event.bytes_total))
        elif event.stage == "RECEIVED":
            self._progress.update(self._task, completed=event.bytes_received, total=event.bytes_received or 1,
                                  detail=_size(event.bytes_received, event.bytes_received))
        elif event.message:
            self._progress.update(self._task, detail=event.message)


def _size(done: int, total: int) -> str:
    mib = 1024 * 1024
    return f"{done / mib:.1f}/{total / mib:.1f} MiB" if total else f"{done / mib:.1f} MiB"
