"""How a tuning budget is shared among kernels: most where the time goes.

    allocate({workload: share of latency}, total_trials, min_trials, max_trials) -> {workload: trials}

Measured on a 2-core machine (docs/research/2026-11-25-tvm-cpu-schedules.md): 16-32 trials
per kernel never beat the agent's rule schedules; tuning paid only with about a hundred trials
or more on the few kernels that dominate. So trials go to the kernels with the largest shares,
each getting at least `min_trials` (fewer is wasted), at most `max_trials`, the rest in
proportion to share; kernels under MIN_SHARE of the latency get none, whatever the budget.
"""
from __future__ import annotations

MIN_SHARE = 0.01         # a kernel under 1 % of the latency cannot pay back its tuning
MIN_TASK_TRIALS = 64
MAX_TASK_TRIALS = 512    # TVM's guidance: 200-500 trials per task for good results


def allocate(shares: dict[str, float], total_trials: int, min_trials: int = MIN_TASK_TRIALS,
             max_trials: int = MAX_TASK_TRIALS) -> dict[str, int]:
    """Trials per workload, in order of share (largest first); see the module docstring."""
    total_trials = int(total_trials)
    min_trials = max(1, min(min_trials, max_trials))
    ranked = sorted(((share, workload) for workload, share in shares.items() if share >= MIN_SHARE),
                    reverse=True)
    if total_trials < 1 or not ranked:
        return {}
    chosen = ranked[:max(1, total_trials // min_trials)]
    left, left_share = total_trials, sum(share for share, _ in chosen)
    plan: dict[str, int] = {}
    for share, workload in chosen:  # the largest first: when it is capped, the rest get more
        fair = round(left * share / left_share) if left_share > 0 else left
        trials = min(max(fair, min_trials), max_trials, left)
        if trials < min_trials:  # what is left is too little to pay off on any kernel
            break
        plan[workload] = trials
        left -= trials
        left_share -= share
    return plan
