"""The one rule for "the best trial" of a study, used by the sweep's summary, its confirmation and the report.

A variant asks whether some setting beats the chapter's. So the best trial is the COMPLETE trial with the
highest value **other than the control**: the control is what every candidate is compared with, never a
candidate itself. When the control scores highest, the best trial is still the best searched setting, and
its difference to the control is negative: that is the answer (no setting beat the chapter).

- Pruned, failed, running and waiting trials are never candidates: they have no final value.
- Ties are broken by the lower trial number: the setting found first.
- A value that is not a finite number never wins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True)
class Entry:
    """What the rule needs to know of a trial."""
    number: int
    state: str  # Optuna's TrialState name: COMPLETE, PRUNED, FAIL, RUNNING, WAITING
    control: bool
    value: float | None


def candidates(entries: Iterable[Entry]) -> list[Entry]:
    """The trials that may be the best, best first (value descending, then trial number ascending)."""
    eligible = [e for e in entries if e.state == "COMPLETE" and not e.control
                and e.value is not None and math.isfinite(e.value)]
    return sorted(eligible, key=lambda e: (-e.value, e.number))


def best_number(entries: Iterable[Entry]) -> int | None:
    """The number of the best trial by the rule above, or None when no trial other than the control completed."""
    ranked = candidates(entries)
    return ranked[0].number if ranked else None


def from_trials(trials) -> list[Entry]:
    """Entries from Optuna FrozenTrials: the control is the trial whose user attr ``control`` is set."""
    return [Entry(t.number, t.state.name, bool(t.user_attrs.get("control")), t.value) for t in trials]
