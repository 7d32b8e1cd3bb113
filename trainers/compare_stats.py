"""Aggregate statistics of multi-seed comparisons (Agarwal et al., NeurIPS 2021), with paired test users.

A learning method's *runs* (training seeds) are the units ``rliable`` resamples; here every run and every
baseline also plays the *same* held-out users, so each score is a [runs, users] matrix of per-user session
returns. The interval of :func:`bootstrap_intervals` resamples both: runs with replacement within each
method (the stratified bootstrap over runs of rliable, one stratum per method and world) and the test
users with replacement, with the *same* user indices for every method in a replicate — so that the
paired differences against the baselines keep their pairing and carry both sources of uncertainty
(training seeds and the finite test population). Point estimates: the mean and the interquartile mean
(IQM) over runs of the per-run means; percentile intervals.

References:
    - Agarwal, R., Schwarzer, M., Castro, P. S., Courville, A. & Bellemare, M. G. (2021). "Deep
      Reinforcement Learning at the Edge of the Statistical Precipice." NeurIPS (IQM, stratified bootstrap).
    - Efron, B. & Tibshirani, R. (1993). An Introduction to the Bootstrap (percentile intervals).
    - Davison, A. C. & Hinkley, D. V. (1997). Bootstrap Methods and their Application, sec. 3.8
      (resampling clusters of dependent observations).
"""

from __future__ import annotations

import numpy as np

from rayrec.errors import DataError


def iqm(values: np.ndarray, axis: int = -1) -> np.ndarray:
    """Interquartile mean along ``axis``: the mean of the middle 50% (rliable's ``trim_mean(x, 0.25)``).

    With n values, ``floor(n / 4)`` are cut from each end (scipy's convention), so n < 4 gives the mean.
    """
    values = np.sort(np.asarray(values, dtype=np.float64), axis=axis)
    n = values.shape[axis]
    cut = n // 4
    return np.take(values, np.arange(cut, n - cut), axis=axis).mean(axis=axis)


def _check(scores: dict[str, np.ndarray]) -> int:
    users = {np.shape(s)[-1] for s in scores.values()}
    if len(users) != 1 or any(np.ndim(s) != 2 or np.shape(s)[0] < 1 for s in scores.values()):
        raise DataError(
            "scores must be [runs, users] matrices over the same users, got "
            + ", ".join(f"{k}: {np.shape(v)}" for k, v in scores.items())
        )
    return users.pop()


def bootstrap_intervals(
    scores: dict[str, np.ndarray],
    pairs: list[tuple[str, str]],
    reps: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
    clusters: np.ndarray | None = None,
) -> dict[str, dict]:
    """Mean and IQM over runs (with intervals) of every method, and paired differences ``a - b``.

    Args:
        scores: ``{name: [runs, users]}`` per-user session returns, the same users (columns) for all.
        pairs: ``(a, b)`` differences to report (mean over runs of ``a`` minus mean over runs of ``b``).
        reps: bootstrap replicates.
        clusters: [users] a cluster label per user, where users are not independent (sessions started
            from the same logged history): whole clusters are resampled (the cluster bootstrap; Davison &
            Hinkley 1997, sec. 3.8), each replicate weighting a user by how often its cluster was drawn.
            None: users are independent and resampled one by one.

    Returns:
        ``{"methods": {name: {"runs", "mean", "iqm", "mean_ci": [lo, hi], "iqm_ci": [lo, hi]}},
        "differences": {"a - b": {"mean", "ci": [lo, hi], "above_zero": bool}}}``.
    """
    num_users = _check(scores)
    if clusters is not None:
        if np.shape(clusters) != (num_users,):
            raise DataError(
                f"clusters must label each of the {num_users} users, got shape {np.shape(clusters)}"
            )
        _, members = np.unique(clusters, return_inverse=True)  # [users] cluster index of each user
        num_clusters = int(members.max()) + 1
    rng = np.random.default_rng(seed)
    scores = {k: np.asarray(v, dtype=np.float64) for k, v in scores.items()}  # once, not per replicate
    run_means = {k: v.mean(axis=1) for k, v in scores.items()}  # [runs]
    boot_mean = {k: np.empty(reps) for k in scores}
    boot_iqm = {k: np.empty(reps) for k in scores}
    boot_diff = {pair: np.empty(reps) for pair in pairs}
    for r in range(reps):
        # The users (or clusters) drawn are shared by every method: that keeps the pairing.
        if clusters is None:
            users = rng.integers(0, num_users, num_users)
        else:
            weight = np.bincount(rng.integers(0, num_clusters, num_clusters), minlength=num_clusters)[members]
        replicate = {}
        for name, matrix in scores.items():
            runs = rng.integers(0, matrix.shape[0], matrix.shape[0])  # stratified: within this method
            if clusters is None:
                per_run = matrix[np.ix_(runs, users)].mean(axis=1)  # [runs]
            else:
                per_run = matrix[runs] @ weight / weight.sum()  # [runs]
            replicate[name] = per_run
            boot_mean[name][r] = per_run.mean()
            boot_iqm[name][r] = iqm(per_run)
        for a, b in pairs:
            boot_diff[(a, b)][r] = replicate[a].mean() - replicate[b].mean()
    q = [100 * alpha / 2, 100 * (1 - alpha / 2)]
    methods = {
        name: {
            "runs": int(np.shape(scores[name])[0]),
            "mean": float(run_means[name].mean()),
            "iqm": float(iqm(run_means[name])),
            "mean_ci": [float(x) for x in np.percentile(boot_mean[name], q)],
            "iqm_ci": [float(x) for x in np.percentile(boot_iqm[name], q)],
        }
        for name in scores
    }
    differences = {}
    for a, b in pairs:
        lo, hi = (float(x) for x in np.percentile(boot_diff[(a, b)], q))
        differences[f"{a} - {b}"] = {
            "a": a,
            "b": b,
            "mean": float(run_means[a].mean() - run_means[b].mean()),
            "ci": [lo, hi],
            "above_zero": bool(lo > 0),
        }
    return {"methods": methods, "differences": differences}


def curve_band(curves: np.ndarray, reps: int = 1000, seed: int = 0, alpha: float = 0.05) -> np.ndarray:
    """Mean over runs and its bootstrap percentile band at every point of ``curves`` [runs, T] → [3, T]."""
    curves = np.asarray(curves, dtype=np.float64)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, curves.shape[0], (reps, curves.shape[0]))  # [reps, runs]
    boot = curves[idx].mean(axis=1)  # [reps, T]
    lo, hi = np.percentile(boot, [100 * alpha / 2, 100 * (1 - alpha / 2)], axis=0)
    return np.stack([curves.mean(axis=0), lo, hi])
