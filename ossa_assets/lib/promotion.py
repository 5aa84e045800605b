"""The offline promotion rule: may a new model version enter its route's release?

Only if its blocking checks passed and, on the same held-out set, it is not worse than the live
champion (within a relative tolerance, so evaluation noise does not flip-flop). Without a
champion, a version that passed its checks is eligible. The verdict is tagged on the registered
version (`ossa.release_eligible`); the release (lib/release.py) then lets it in as the champion
of an empty route or as the challenger beside the live champion, and the MLflow aliases below
mirror that release.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

CHAMPION = "champion"
CHALLENGER = "challenger"
ELIGIBLE_TAG = "ossa.release_eligible"  # "true" | "false", on a registered version


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
