"""How much of the user's hidden satisfaction does the observation carry? (``python -m benchmarks.state_estimate``)

On ``long-term`` the slate that pays depends on the user's satisfaction, which is hidden. A learner shown it
(``--env observe_hidden=satisfaction``) reaches about 95% of the planner, one shown only the observable
session feedback about 80% (README, "Slate RL"). This measures what separates the two without training
anything: the best estimate of the satisfaction each observable column set allows, fitted on the steps of
one half of the users and scored on the other half.

A behaviour policy (by default the planner's feedback switch, which visits both low and high satisfaction)
runs ``--users`` users of the preset with every observable user column and the hidden satisfaction appended.
Every step of every session gives one row: the satisfaction when the slate was chosen, and what a server
can know then. Each estimator is a least-squares fit of the satisfaction on a degree-2 polynomial of its
columns (a ridge of 1e-6), so the comparison is between information, not model classes:

- ``session clock``: the step of the session and of the user's whole stay (what every observation holds);
- ``+ completion rate``: ``last_engagement``, the satisfaction the last click met, one click late;
- ``+ rating of that item``: ``last_click_rating``, what that click did to the satisfaction;
- ``+ click counts``: the user's clicks so far and steps since the last click (a server's own log);
- ``+ satisfaction estimate``: ``satisfaction_estimate`` (``observe_lift``), the completion rate plus what a
  click on that item is logged to do to it, with the columns of ``+ rating of that item``.

Per estimator: R², the root mean squared error, and the share of steps where the estimate and the truth
fall on different sides of the switch's threshold (the decision a policy makes from it), over all steps
and over the steps before the user's first click, where no feedback exists yet.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field

import numpy as np

from benchmarks.presets import FEEDBACK_SWITCHES
from envs import build_simulator, make_policy
from envs.policies import ItemRulePolicy
from envs.presets import preset
from envs.rollout import StepRecord, evaluate_policy
from rayrec.features import LAST_CLICK_RATING, LAST_ENGAGEMENT, SATISFACTION_ESTIMATE

THRESHOLD = 0.75
"""The satisfaction the feedback switches spend above (``benchmarks.presets.FEEDBACK_SWITCHES``)."""
COUNT_COLUMNS = ("stay_step", "clicks", "since_click")
"""Counts, which enter the fit as ``log1p``."""


@dataclass
class StepLog:
    """One row per (user, step): the observable user columns and the hidden satisfaction (an observer)."""

    names: tuple[str, ...]
    columns: dict[str, list[np.ndarray]] = field(default_factory=dict)
    clicks: dict[int, int] = field(default_factory=dict)
    steps: dict[int, int] = field(default_factory=dict)
    since_click: dict[int, int] = field(default_factory=dict)

    def __call__(self, record: StepRecord) -> None:
        first = record.obs["features"][:, 0, :]  # [R, F]: user columns are the same in every candidate row
        users = record.users.tolist()
        row = {
            "user": record.users,
            "session_step": record.session_step.astype(np.float64),
            "stay_step": np.array([self.steps.get(u, 0) for u in users], np.float64),
            "clicks": np.array([self.clicks.get(u, 0) for u in users], np.float64),
            "since_click": np.array([self.since_click.get(u, 0) for u in users], np.float64),
            "last_engagement": first[:, self.names.index(LAST_ENGAGEMENT)].astype(np.float64),
            "last_click_rating": first[:, self.names.index(LAST_CLICK_RATING)].astype(np.float64),
            "satisfaction_estimate": first[:, self.names.index(SATISFACTION_ESTIMATE)].astype(np.float64),
            "satisfaction": first[:, self.names.index("satisfaction")].astype(np.float64),
        }
        for key, value in row.items():
            self.columns.setdefault(key, []).append(value)
        for user, chosen in zip(users, record.chosen.tolist(), strict=True):
            self.steps[user] = self.steps.get(user, 0) + 1
            clicked = chosen >= 0
            self.clicks[user] = self.clicks.get(user, 0) + int(clicked)
            self.since_click[user] = 0 if clicked else self.since_click.get(user, 0) + 1

    def table(self) -> dict[str, np.ndarray]:
        return {key: np.concatenate(parts) for key, parts in self.columns.items()}


ESTIMATORS: dict[str, tuple[str, ...]] = {
    "session clock": ("session_step", "stay_step"),
    "+ completion rate": ("session_step", "stay_step", "last_engagement"),
    "+ rating of that item": ("session_step", "stay_step", "last_engagement", "last_click_rating"),
    "+ click counts": (
        "session_step",
        "stay_step",
        "last_engagement",
        "last_click_rating",
        "clicks",
        "since_click",
    ),
    "+ satisfaction estimate": (
        "session_step",
        "stay_step",
        "last_engagement",
        "last_click_rating",
        "satisfaction_estimate",
    ),
}
"""Estimator → the columns it reads (each a subset of what a server logs or the observation holds)."""


def design(table: dict[str, np.ndarray], columns: tuple[str, ...]) -> np.ndarray:
    """[n, p] a constant, the columns (counts as log1p), their squares and pairwise products, and an
    indicator of no click yet (its feedback columns are then 0 by convention, not by measurement)."""
    base = [np.log1p(table[c]) if c in COUNT_COLUMNS else table[c] for c in columns]
    if "last_engagement" in columns:
        base.append((table["clicks"] == 0).astype(np.float64))
    x = np.stack(base, axis=1)  # [n, c]
    i, j = np.triu_indices(x.shape[1])
    return np.concatenate([np.ones((len(x), 1)), x, x[:, i] * x[:, j]], axis=1)


def fit_and_score(
    table: dict[str, np.ndarray], columns: tuple[str, ...], train: np.ndarray
) -> dict[str, float]:
    """Least squares on the ``train`` rows [n] bool, scored on the others."""
    x, y = design(table, columns), table["satisfaction"]
    a = x[train]
    weights = np.linalg.solve(a.T @ a + 1e-6 * np.eye(a.shape[1]), a.T @ y[train])
    test = ~train
    estimate, truth = np.clip(x[test] @ weights, 0.0, 1.0), y[test]
    before_click = table["clicks"][test] == 0
    wrong_side = (estimate > THRESHOLD) != (truth > THRESHOLD)
    return {
        "r2": 1.0 - float(np.mean((estimate - truth) ** 2) / np.var(truth)),
        "rmse": float(np.sqrt(np.mean((estimate - truth) ** 2))),
        "wrong_side": float(wrong_side.mean()),
        "wrong_side_before_click": float(wrong_side[before_click].mean()) if before_click.any() else np.nan,
        "wrong_side_after_click": float(wrong_side[~before_click].mean()),
    }


def measure(name: str, users: int, seed: int, behaviour: str) -> tuple[str, dict[str, np.ndarray], dict]:
    """(behaviour policy's name and mean return, the step table, estimator → :func:`fit_and_score`)."""
    config = preset(name).replace(
        observe_rating=True,
        observe_feedback=True,
        observe_last_click=True,
        observe_lift=True,
        observe_hidden=("satisfaction",),
    )
    sim = build_simulator(config, batch=min(users, 1000))
    if behaviour == "feedback-switch":
        policy = ItemRulePolicy(sim, FEEDBACK_SWITCHES[0])
    else:
        policy = make_policy(behaviour, sim)
    log = StepLog(sim.config.feature_names)
    outcomes = evaluate_policy(policy, sim, users, seed, observers=[log])
    table = log.table()
    train = table["user"] % 2 == 0  # half of the users fit, the other half score
    scores = {estimator: fit_and_score(table, columns, train) for estimator, columns in ESTIMATORS.items()}
    return f"{policy.name} (mean return {outcomes.session_return.mean():.2f})", table, scores


def lift_accuracy(name: str) -> float:
    """Correlation, over the catalog, of ``item_lift`` with what a click on each item does to the satisfaction
    in the world's dynamics (:meth:`envs.response.UserResponse.click_change` for a user's first clickbait,
    before clipping)."""
    sim = build_simulator(preset(name).replace(observe_lift=True), batch=1)
    catalog = sim.catalog
    true_change = sim.response.click_change(catalog.quality, catalog.clickbait, catalog.clickbait)
    return float(np.corrcoef(catalog.item_log[:, 2], true_change)[0, 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="long-term")
    parser.add_argument("--users", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--policy",
        default="feedback-switch",
        help="behaviour policy: feedback-switch (the planner's, on last_engagement) or a policy spec (random, ...)",
    )
    args = parser.parse_args()
    started = time.perf_counter()
    behaviour, table, scores = measure(args.preset, args.users, args.seed, args.policy)
    before_click = table["clicks"] == 0
    print(
        f"### What the observation says of the satisfaction: {args.preset}, {args.users} users "
        f"(seed {args.seed}), behaviour {behaviour}\n"
    )
    print(
        f"{len(before_click)} steps, {before_click.mean():.1%} of them before the user's first click; "
        f"satisfaction mean {table['satisfaction'].mean():.3f}, sd {table['satisfaction'].std():.3f}; "
        f"{(table['satisfaction'] > THRESHOLD).mean():.1%} of steps above {THRESHOLD}.\n"
    )
    print("| estimator | R² | RMSE | wrong side of 0.75 | before the first click | after it |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, s in scores.items():
        print(
            f"| {name} | {s['r2']:.3f} | {s['rmse']:.3f} | {s['wrong_side']:.1%} | "
            f"{s['wrong_side_before_click']:.1%} | {s['wrong_side_after_click']:.1%} |"
        )
    print(
        f"\n`item_lift` (observe_lift) against what a click on the item does to the satisfaction in the world's "
        f"dynamics: correlation {lift_accuracy(args.preset):.2f} over the catalog."
    )
    print(f"\n({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
