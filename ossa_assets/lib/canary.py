"""The live judgement of a challenger: promote, roll back, or keep collecting.

Per signal (errors, slow answers, invalid outputs, negative feedback) the question is whether
the challenger's share of the route's *bad* events exceeds its share of the route's *traffic*
for that signal. Under no regression, each bad event lands on the challenger with probability
p0 = its share of the signal's base (requests; judged outputs; feedback given), so its count
of bad events given their total is Binomial(n, p0). The test is a mixture sequential
probability ratio test (mSPRT, Robbins 1970; the form Netflix uses for canaries, Lindon &
Malek 2020): the likelihood ratio of "p > p0", mixed over a uniform prior on (p0, 1), against
p = p0. Under the null it is a non-negative martingale, so by Ville's inequality it ever
reaches 1/α with probability at most α, however often it is looked at: the rollback sensor may
decide on every tick without inflating its false rollback rate. The signals share α equally
(Bonferroni), so a healthy challenger is rolled back with probability at most α in all.

A minimum-sample guard keeps the first requests from deciding anything (they are also when a
warm-up blip is likeliest). A challenger that served `promote_after` requests without evidence
of regression is promoted. Pure functions: the sensor (sensors/canary.py) and tests call them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

# signal -> (the bad outcome, the outcomes that form its base); outcome counters come from the
# server's ossa_variant_outcomes_total (ossa_serving/metrics.py)
SIGNALS: dict[str, tuple[str, tuple[str, ...]]] = {
    "errors": ("error", ("ok", "error", "slow")),
    "slow": ("slow", ("ok", "error", "slow")),
    "invalid": ("invalid", ("valid", "invalid")),
    "feedback": ("feedback_bad", ("feedback_good", "feedback_bad")),
}


@dataclass(frozen=True)
class CanaryPolicy:
    alpha: float = 0.05  # bound on the false rollback rate of a healthy challenger
    min_requests: int = 50  # challenger requests before any decision
    min_events: int = 5  # bad events of a signal (both variants) before it is tested
    promote_after: int = 500  # challenger requests without evidence of regression: promote


@dataclass(frozen=True)
class SignalTest:
    signal: str
    bad_challenger: int
    bad_total: int
    p0: float  # the challenger's share of the signal's base
    log_lr: float  # log of the mixture likelihood ratio
    threshold: float  # log(len(SIGNALS) / alpha)

    @property
    def rejects(self) -> bool:
        return self.log_lr >= self.threshold


@dataclass(frozen=True)
class Decision:
    action: str  # promote | rollback | collect
    reason: str
    tests: list[SignalTest] = field(default_factory=list)
    challenger_requests: int = 0

    def evidence(self) -> dict:
        return {"action": self.action, "reason": self.reason, "challenger_requests": self.challenger_requests,
                "tests": [asdict(t) for t in self.tests]}


def log_mixture_lr(x: int, n: int, p0: float) -> float:
    """log of  ∫_{p0}^{1} Bin(x; n, p) dp / (1 - p0)  /  Bin(x; n, p0)  (the binomial
    coefficients cancel). 0 when there is nothing to compare."""
    if n <= 0 or not 0.0 < p0 < 1.0:
        return 0.0
    from scipy.special import betainc, betaln

    a, b = x + 1, n - x + 1
    # ∫_{p0}^1 p^x (1-p)^(n-x) dp = B(a, b) * (1 - I_{p0}(a, b))
    tail = 1.0 - float(betainc(a, b, p0))
    if tail <= 0.0:  # underflow: the data sit far below p0, no evidence for "worse"
        return -math.inf
    log_num = betaln(a, b) + math.log(tail) - math.log1p(-p0)
    log_den = x * math.log(p0) + (n - x) * math.log1p(-p0)
    return float(log_num - log_den)


def counts_for(outcomes: dict[str, int], signal: str) -> tuple[int, int]:
    """(bad, base) of one variant's outcome counts for a signal."""
    bad, base = SIGNALS[signal]
    return int(outcomes.get(bad, 0)), int(sum(outcomes.get(o, 0) for o in base))


def decide(champion: dict[str, int], challenger: dict[str, int], policy: CanaryPolicy = CanaryPolicy()) -> Decision:
    """`champion`/`challenger`: outcome -> count since the challenger entered the release."""
    requests = sum(challenger.get(o, 0) for o in SIGNALS["errors"][1])
    if requests < policy.min_requests:
        return Decision("collect", f"min-sample guard: {requests}/{policy.min_requests} challenger requests",
                        challenger_requests=requests)
    threshold = math.log(len(SIGNALS) / policy.alpha)
    tests = []
    for signal in SIGNALS:
        bad_c, base_c = counts_for(challenger, signal)
        bad_0, base_0 = counts_for(champion, signal)
        if base_c + base_0 == 0:
            continue
        p0 = base_c / (base_c + base_0)
        n = bad_c + bad_0
        llr = log_mixture_lr(bad_c, n, p0) if n >= policy.min_events else 0.0
        tests.append(SignalTest(signal, bad_c, n, round(p0, 6), round(llr, 4), round(threshold, 4)))
    worst = max(tests, key=lambda t: t.log_lr - t.threshold, default=None)
    if worst is not None and worst.rejects:
        return Decision("rollback", f"{worst.signal}: the challenger had {worst.bad_challenger} of {worst.bad_total} "
                                    f"bad events at a {worst.p0:.1%} share (log LR {worst.log_lr:.2f} >= "
                                    f"{worst.threshold:.2f}, alpha {policy.alpha})", tests, requests)
    if requests >= policy.promote_after:
        return Decision("promote", f"{requests} challenger requests, no signal of regression "
                                   f"(alpha {policy.alpha})", tests, requests)
    return Decision("collect", f"{requests}/{policy.promote_after} challenger requests, no signal of regression yet",
                    tests, requests)


# -- one tick of the rollback sensor --------------------------------------------------------------

Outcomes = dict[str, dict[str, dict[str, int]]]  # route -> model_version -> outcome -> count


@dataclass(frozen=True)
class Move:
    route: str
    action: str  # promote | rollback
    before: object  # lib.release.Release
    after: object
    decision: Decision | None  # None: a person moved it (ossa release)


def _sub(now: dict[str, int], base: dict[str, int]) -> dict[str, int] | None:
    out = {k: now.get(k, 0) - base.get(k, 0) for k in set(now) | set(base)}
    return None if any(v < 0 for v in out.values()) else out  # a counter went back: a server restarted


def judge(store, outcomes: Outcomes, cursor: dict, policy: CanaryPolicy, moved_by: str
          ) -> tuple[list[Move], dict, list[str]]:
    """Judge every route whose release has a challenger, on the outcomes counted since the
    sensor first saw that release version (the cursor keeps the baseline); move the release
    (compare-and-set on the version it judged) when the rule says so. Returns the moves, the
    next cursor and one note per route."""
    from ossa_assets.lib import release as rl
    from ossa_assets.lib.domains import ROUTES

    moves, notes, nxt = [], [], {}
    for route in ROUTES:
        rel = store.get(route)
        if rel is None or rel.challenger is None:
            continue
        champ, chall = rel.champion.name, rel.challenger.name
        now = outcomes.get(route, {})
        counts = {champ: dict(now.get(champ, {})), chall: dict(now.get(chall, {}))}
        seen = cursor.get(route)
        if not seen or seen.get("release") != rel.version:
            nxt[route] = {"release": rel.version, "base": counts}
            notes.append(f"{route} v{rel.version}: baseline taken ({chall} at {rel.challenger.weight:.0%})")
            continue
        d_champ, d_chall = _sub(counts[champ], seen["base"].get(champ, {})), _sub(counts[chall], seen["base"].get(chall, {}))
        if d_champ is None or d_chall is None:
            nxt[route] = {"release": rel.version, "base": counts}
            notes.append(f"{route} v{rel.version}: counters went back (a server restarted): baseline taken again")
            continue
        decision = decide(d_champ, d_chall, policy)
        if decision.action == "collect":
            nxt[route] = seen
            notes.append(f"{route} v{rel.version}: {decision.reason}")
            continue
        transition = rl.rollback if decision.action == "rollback" else rl.promote

        def step(cur, transition=transition, decision=decision, judged=rel.version):
            if cur is None or cur.version != judged:  # moved since it was judged: judge again
                return None
            return transition(cur, moved_by=moved_by, reason=decision.reason, evidence=decision.evidence())

        try:
            after = rl.move(store, route, step)
        except rl.ReleaseConflict:
            after = None
        if after is None:
            notes.append(f"{route} v{rel.version}: moved by someone else meanwhile; judged again next tick")
            continue
        moves.append(Move(route, decision.action, rel, after, decision))
        notes.append(f"{route}: {decision.action} {chall} -> release v{after.version}: {decision.reason}")
    return moves, nxt, notes


def record_move(graph, move: Move) -> None:
    """The lineage graph's record of a move: both releases as Release nodes, the new one
    REPLACED the old, a rollback also ROLLED_BACK_FROM it; each DERIVED_FROM its engines."""
    import json

    def node(rel):  # the properties the recorder gives a serving/release materialization
        return {"id": rel.lineage_id, "kind": "Release", "meta_route": rel.route, "meta_version": rel.version,
                "moved_by": rel.moved_by, "reason": rel.reason, "moved_at": rel.at,
                "meta_variants": json.dumps({v.name: {"role": v.role, "weight": v.weight,
                                                      "lineage_id": v.spec.lineage_id} for v in rel.variants},
                                            sort_keys=True)}

    eid = f"endpoint:{move.route}"
    graph.upsert_nodes([node(move.before), node(move.after),
                        {"id": eid, "kind": "Endpoint", "route": move.route, "release": move.after.lineage_id}])
    edges = [(move.after.lineage_id, "REPLACED", move.before.lineage_id, {"action": move.action}),
             (eid, "FOLLOWS", move.after.lineage_id, {"by": move.after.moved_by})]
    if move.action == "rollback":
        edges.append((move.after.lineage_id, "ROLLED_BACK_FROM", move.before.lineage_id,
                      {"rolled_back": move.before.challenger.name,
                       "reason": move.decision.reason if move.decision else move.after.reason}))
    edges += [(rel.lineage_id, "DERIVED_FROM", v.spec.lineage_id, {}) for rel in (move.before, move.after)
              for v in rel.variants]
    graph.upsert_edges(edges)
