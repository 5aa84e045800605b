"""The promotion rule: challenger -> champion.

Every new model version becomes the registry's `challenger`. It becomes `champion` only if its
blocking checks passed and, on the same held-out set, it is not worse than the current champion
(within a relative tolerance, so evaluation noise does not flip-flop the alias). Without a
champion, a challenger that passed its checks is promoted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

CHAMPION = "champion"
CHALLENGER = "challenger"


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def decide(
    checks_passed: bool,
    challenger_loss: float,
    champion_loss: float | None,
    tolerance: float = 0.0,
) -> Decision:
    if not checks_passed:
        return Decision(False, "blocking checks failed")
    if not math.isfinite(challenger_loss):
        return Decision(False, f"held-out loss is {challenger_loss}")
    if champion_loss is None or not math.isfinite(champion_loss):
        return Decision(True, "no champion yet")
    bound = champion_loss * (1 + tolerance)
    if challenger_loss <= bound:
        return Decision(True, f"held-out loss {challenger_loss:.4f} <= champion {champion_loss:.4f}"
                              f" (+{tolerance:.0%})")
    return Decision(False, f"held-out loss {challenger_loss:.4f} worse than champion {champion_loss:.4f}"
                           f" (+{tolerance:.0%})")
