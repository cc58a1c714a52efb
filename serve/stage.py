"""The stage the read path follows: polled from the cutover's stage row, never per request.

A background thread re-reads the row every `serve.stage_refresh_s`; requests read the
cached view, so a stage change is followed within that delay, without a restart, and a
request never waits on the ops keyspace. A failed poll keeps the last view (and says so).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cutover.stages import read_stores
from cutover.state import StageState


@dataclass(frozen=True, slots=True)
class StageView:
    stage: str
    version: int
    control: str
    candidate: str | None

    @classmethod
    def of(cls, state: StageState) -> StageView:
        control, candidate = read_stores(state.stage)
        return cls(state.stage, state.version, control, candidate)


class StageFollower:
    def __init__(self, fetch: Callable[[], StageState], refresh_s: float) -> None:
        self._fetch = fetch
        self.refresh_s = refresh_s
        self._view: StageView | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.polls = 0
        self.last_error: str | None = None

    @property
    def view(self) -> StageView:
        if self._view is None:
            self.refresh()
        assert self._view is not None
        return self._view

    def refresh(self) -> StageView:
        """Read the stage row now (raises if it cannot be read and no view is known)."""
        try:
            self._view = StageView.of(self._fetch())
            self.last_error = None
        except Exception as exc:
            self.last_error = f"{type(exc).__name__}: {str(exc)[:200]}"
            if self._view is None:
                raise
        self.polls += 1
        return self._view

    def start(self) -> None:
        self.refresh()
        self._stop.clear()
        self._thread = threading.Thread(target=self._poll, name="stage", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(self.refresh_s):
            self.refresh()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def status(self) -> dict[str, Any]:
        view = self.view
        return {
            "stage": view.stage,
            "version": view.version,
            "control": view.control,
            "candidate": view.candidate,
            "refresh_s": self.refresh_s,
            "last_error": self.last_error,
        }
