"""One line per target, the same in every bench: what was promised, what was measured, MET or MISSED.

    from verdict import Verdicts
    v = Verdicts()
    v.at_most("incremental / full curation time", 0.092, 0.10)
    v.at_least("index / encode throughput", 0.97, 0.9)
    v.report()   # prints the summary; returns 1 if any target was missed (the bench's exit code)

A target that could not be measured in this run (a phase failed, too few samples) is printed as
MISSED with the reason: a verdict is never skipped silently.
"""

from __future__ import annotations

import math


class Verdicts:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, bool]] = []

    def _add(self, name: str, measured: float | None, target: str, met: bool, unit: str) -> bool:
        shown = "not measured" if measured is None or (isinstance(measured, float) and math.isnan(measured)) \
            else f"{measured:.3f}{unit}"
        self.rows.append((name, target, shown, met))
        print(f"TARGET {name}: {target}; measured {shown} -> {'MET' if met else 'MISSED'}", flush=True)
        return met

    def at_most(self, name: str, measured: float | None, bound: float, unit: str = "") -> bool:
        ok = measured is not None and not math.isnan(measured) and measured <= bound
        return self._add(name, measured, f"<= {bound}{unit}", ok, unit)

    def at_least(self, name: str, measured: float | None, bound: float, unit: str = "") -> bool:
        ok = measured is not None and not math.isnan(measured) and measured >= bound
        return self._add(name, measured, f">= {bound}{unit}", ok, unit)

    def report(self) -> int:
        missed = [r for r in self.rows if not r[3]]
        print(f"\n{len(self.rows) - len(missed)} of {len(self.rows)} targets MET"
              + (f"; MISSED: {', '.join(r[0] for r in missed)}" if missed else ""))
        return 1 if missed else 0
