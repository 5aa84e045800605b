"""The rollback decision rule (lib/canary.py), by simulation: its false rollback rate under no
regression stays within alpha however often it looks, a degraded challenger is rolled back
soon after the evidence suffices, a healthy one is promoted."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ossa_assets.lib.canary import CanaryPolicy, decide, log_mixture_lr

POLICY = CanaryPolicy(alpha=0.05, min_requests=50, min_events=5, promote_after=500)


def _run(rng, q_champion: float, q_challenger: float, share: float = 0.1, per_tick: int = 200,
         slow_challenger: float | None = None, max_ticks: int = 400):
    """One canary: each tick, `per_tick` requests split by `share`; each fails with its
    variant's probability. The rule is asked on every tick. (action, tick)."""
    champ = {"ok": 0, "error": 0, "slow": 0}
    chall = {"ok": 0, "error": 0, "slow": 0}
    for tick in range(1, max_ticks + 1):
        n_c = rng.binomial(per_tick, share)
        for counts, n, q, slow in ((champ, per_tick - n_c, q_champion, 0.02),
                                   (chall, n_c, q_challenger, slow_challenger or 0.02)):
            e = rng.binomial(n, q)
            s = rng.binomial(n - e, slow)
            counts["error"] += e
            counts["slow"] += s
            counts["ok"] += n - e - s
        d = decide(champ, chall, POLICY)
        if d.action != "collect":
            return d.action, tick, d
    return "collect", max_ticks, None


def test_no_regression_rolls_back_at_most_alpha_of_the_time_over_300_runs():
    rng = np.random.default_rng(7)
    runs = [_run(rng, 0.02, 0.02) for _ in range(300)]
    rolled = sum(a == "rollback" for a, _, _ in runs)
    promoted = sum(a == "promote" for a, _, _ in runs)
    assert rolled / len(runs) <= POLICY.alpha, rolled
    assert rolled + promoted == len(runs)  # every run ends (promote_after reached)
    # the fault this guards: a fixed-sample test (one-sided binomial p < alpha) asked on every
    # tick rolls healthy challengers back far more often than alpha
    from scipy.stats import binom

    rng = np.random.default_rng(7)
    naive = 0
    for _ in range(300):
        e = {"n": 0, "x": 0, "req_c": 0, "req": 0}
        for _t in range(25):
            n_c = rng.binomial(200, 0.1)
            x, y = rng.binomial(n_c, 0.02), rng.binomial(200 - n_c, 0.02)
            e["x"] += x
            e["n"] += x + y
            e["req_c"] += n_c
            e["req"] += 200
            if e["n"] and binom.sf(e["x"] - 1, e["n"], e["req_c"] / e["req"]) < POLICY.alpha:
                naive += 1
                break
    assert naive / 300 > 2 * POLICY.alpha > rolled / len(runs), (naive, rolled)


def test_a_degraded_challenger_is_rolled_back_on_the_tick_its_evidence_suffices():
    rng = np.random.default_rng(11)
    runs = [_run(rng, 0.02, 0.10) for _ in range(200)]
    assert sum(a == "rollback" for a, _, _ in runs) >= 0.95 * len(runs)
    # the rule acts on the first look at which its statistic crosses the line: never later
    for action, tick, d in runs[:20]:
        if action == "rollback":
            worst = max(d.tests, key=lambda t: t.log_lr - t.threshold)
            assert worst.signal == "errors" and worst.rejects
    ticks = sorted(t for a, t, _ in runs if a == "rollback")
    assert ticks[len(ticks) // 2] <= 10  # median: ~10 ticks of 20 challenger requests each
    # a slow challenger (5x the slow answers) is caught on the latency signal
    rng = np.random.default_rng(12)
    slow = [_run(rng, 0.01, 0.01, slow_challenger=0.10) for _ in range(50)]
    assert sum(a == "rollback" and d.reason.startswith("slow") for a, _, d in slow) >= 45


def test_a_healthy_challenger_is_promoted_and_the_guard_holds():
    rng = np.random.default_rng(3)
    action, tick, d = _run(rng, 0.02, 0.005)  # better than the champion
    assert action == "promote" and d.challenger_requests >= POLICY.promote_after
    # min-sample guard: 40 challenger requests, all failed, still "collect"
    d = decide({"ok": 1000}, {"error": 40}, POLICY)
    assert d.action == "collect" and "min-sample guard" in d.reason
    assert decide({"ok": 1000}, {"error": 60}, POLICY).action == "rollback"


def test_the_mixture_likelihood_ratio():
    # exactly the null share: no evidence; far above it: strong evidence; below it: none
    assert log_mixture_lr(10, 100, 0.1) < 0
    assert log_mixture_lr(40, 100, 0.1) > math.log(80)
    assert log_mixture_lr(0, 100, 0.1) < 0
    assert log_mixture_lr(0, 0, 0.1) == 0.0
    # against a direct numerical integral
    x, n, p0 = 7, 30, 0.1
    ps = np.linspace(p0, 1, 200001)
    num = np.trapezoid(ps ** x * (1 - ps) ** (n - x), ps) / (1 - p0)
    assert log_mixture_lr(x, n, p0) == pytest.approx(math.log(num / (p0 ** x * (1 - p0) ** (n - x))), rel=1e-4)
