"""When each level of an optimisation stops: after its steps, when its loss stops improving, or when its
share of the time budget is spent.

A time budget is shared among the levels by their expected cost (steps x voxels), cumulatively, so a
level that converges early leaves its time to the next ones.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Optional


@dataclass
class LevelClock:
    """One level: call `done(loss)` after every step; it says whether to stop and records why."""

    name: str
    steps: int
    deadline: float
    tolerance: float
    window: int = 10
    losses: list[float] = field(default_factory=list)
    stopped_by: str = "steps"

    def done(self, loss: float) -> bool:
        self.losses.append(loss)
        if len(self.losses) >= self.steps:
            return True
        if time.monotonic() > self.deadline:
            self.stopped_by = "time budget"
            return True
        if self.tolerance > 0 and len(self.losses) % self.window == 0 and self._converged():
            self.stopped_by = "converged"
            return True
        return False

    def _converged(self) -> bool:
        """The mean loss of the last `window` steps improved on the window before by less than `tolerance`
        (relative)."""
        if len(self.losses) < 2 * self.window:
            return False
        current = sum(self.losses[-self.window:]) / self.window
        previous = sum(self.losses[-2 * self.window:-self.window]) / self.window
        return previous - current < self.tolerance * max(abs(previous), 1e-12)

    def summary(self) -> dict:
        return {"level": self.name, "steps": len(self.losses), "stopped_by": self.stopped_by}


class Schedule:
    """The clocks of all levels, in order; `costs` are their expected relative costs."""

    def __init__(self, levels: list[tuple[str, int, float]], budget_s: Optional[float], tolerance: float) -> None:
        started, total = time.monotonic(), sum(cost for _, _, cost in levels) or 1.0
        self.clocks, spent = [], 0.0
        for name, steps, cost in levels:
            spent += cost
            deadline = started + budget_s * spent / total if budget_s else math.inf
            self.clocks.append(LevelClock(name, steps, deadline, tolerance))

    def summary(self) -> list[dict]:
        return [clock.summary() for clock in self.clocks if clock.losses]
