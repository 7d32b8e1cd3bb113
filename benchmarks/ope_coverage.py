"""Coverage of the off-policy intervals: how often the 95% intervals hold the on-policy truth.

    python -m benchmarks.ope_coverage [--replications 50] [--users 2000] [--workers 2] [--json FILE]

Every replication simulates one A/B experiment whose event log mixes three arms — ``random`` (a quarter of
the users), ``greedy`` (deterministic, a quarter) and ``explore`` (Plackett–Luce sampling over greedy's
scores, half) — each arm's users split between slates of k = 2 and k = 3 (variable slate sizes), in a
small world (600 items, 16-dim embeddings, K = 8 candidates, sessions of up to 6 requests). It then
estimates the value of the target, a sharper Plackett–Luce policy over greedy's scores (temperature 0.5)
that is none of the loggers, with every estimator of ``rayrec ope``, and records whether each 95%
interval holds the truth, which the rollout engine measures on policy with many users.

Settings:

- item level, one-step sessions: the truth is the target's on-policy reward per request, in the
  rare-click world (``no_click_utility`` 1.4: the item-position model nearly holds) and with the default
  click rates (items compete for a click: the item-position model does not hold);
- session level, whole sessions: the truth is the target's on-policy return per user, in the
  rare-click world and in the classic world (the SlateEnvConfig defaults).

Beside rayrec's estimators the item-level table shows ``ips (own arm)``: IPS weighted by each request's
own logged propensity, as ``rayrec ope`` did before the multi-logger weights — the greedy arm's requests
then count only where the target agrees with greedy, which biases it low.
"""

from __future__ import annotations

import os

if __name__ == "__main__":  # one core per worker process: set before numpy starts its thread pool
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = "1"

import argparse
import json
import multiprocessing
import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from envs.config import SlateEnvConfig
from envs.factory import build_simulator
from envs.policies import fitted_greedy
from envs.rollout import evaluate_policy
from rayrec import plackett_luce
from rayrec.ab.logged import RequestRecorder
from rayrec.ab.off_policy import replay
from rayrec.ab.ope import estimate_all
from rayrec.ab.session_ope import estimate_episodes
from rayrec.baselines import RandomPolicy, ScoringPolicy
from rayrec.logs.requests import LoggedRequests
from rayrec.slate_policy import Observation, Slate, SlatePolicy

SMALL_WORLD = {"num_items": 600, "num_topics": 8, "dim": 16, "num_candidates": 8, "budget": 6.0}
SLATE_SIZES = (2, 3)
ARMS = (("random", 0.25), ("greedy", 0.25), ("explore", 0.5))
"""Logging arms and their shares of the users."""
EXPLORE_TEMPERATURE = 1.0
TARGET_TEMPERATURE = 0.5
TRUTH_USERS = 40_000
"""Users per slate size of the on-policy runs that measure the truth (its standard error is a tenth of a
replication's)."""
OWN_ARM = "ips (own arm)"


class SoftmaxPolicy:
    """Plackett–Luce sampling over a scoring policy's scores divided by a temperature (an exploration arm).

    ``log_propensities`` False leaves a slate's propensities NaN, for a policy that never logs (the target).
    """

    def __init__(
        self, base: ScoringPolicy, temperature: float, name: str, log_propensities: bool = True
    ) -> None:
        self.base, self.temperature, self.name, self.log_propensities = (
            base,
            temperature,
            name,
            log_propensities,
        )

    def logits(self, obs: Observation) -> np.ndarray:
        """[B, K] float64."""
        return np.asarray(self.base.scores(obs), dtype=np.float64) / self.temperature

    def select(self, obs: Observation, slate_size: int, rng: np.random.Generator | None = None) -> Slate:
        rng = rng if rng is not None else np.random.default_rng()
        logits = self.logits(obs)
        order = np.argsort(-(logits + rng.gumbel(size=logits.shape)), axis=1)[:, :slate_size]  # Gumbel-top-k
        propensities = np.full(order.shape, np.nan)
        if self.log_propensities:
            marginals = self.position_marginals(obs, slate_size)
            propensities = np.take_along_axis(marginals, order[:, :, None], axis=2)[..., 0]
        return Slate(
            indices=order,
            scores=np.take_along_axis(logits, order, axis=1).astype(np.float32),
            propensities=propensities.astype(np.float32),
        )

    def position_marginals(self, obs: Observation, slate_size: int) -> np.ndarray:
        return plackett_luce.position_marginals(torch.from_numpy(self.logits(obs)), slate_size).numpy()

    def slate_log_prob(self, obs: Observation, slates: np.ndarray) -> np.ndarray:
        logits = torch.from_numpy(self.logits(obs))
        return plackett_luce.slate_log_prob(logits, torch.from_numpy(slates)).numpy()


@dataclass(frozen=True)
class Setting:
    name: str
    level: str
    """``item`` or ``session``."""
    world: dict = field(default_factory=dict)
    """SlateEnvConfig fields beside :data:`SMALL_WORLD`."""


SETTINGS = (
    Setting("rare-click, one step", "item", {"no_click_utility": 1.4, "max_episode_steps": 1}),
    Setting("default clicks, one step", "item", {"max_episode_steps": 1}),
    Setting("rare-click, sessions", "session", {"no_click_utility": 1.4}),
    Setting("classic world, sessions", "session", {}),
)


@dataclass
class World:
    """One setting's simulator configs (one per slate size), policies and on-policy truth."""

    setting: Setting
    configs: dict[int, SlateEnvConfig]
    loggers: dict[str, SlatePolicy]
    target: SlatePolicy
    truth: float
    arms: tuple[tuple[str, float], ...] = ARMS


def on_policy_truth(
    target: SlatePolicy, configs: dict[int, SlateEnvConfig], users: int = TRUTH_USERS
) -> float:
    """The target's mean return per user, ``users`` users on each slate size."""
    returns = [
        evaluate_policy(target, build_simulator(config, 4096), users, 10_000 + k).session_return.mean()
        for k, config in configs.items()
    ]
    return float(np.mean(returns))


def build_world(
    setting: Setting,
    target: SlatePolicy | None = None,
    arms: tuple[tuple[str, float], ...] = ARMS,
    truth_users: int = TRUTH_USERS,
) -> World:
    """The setting's simulator configs, policies and the on-policy truth of the target.

    Args:
        target: the policy to evaluate (default: Plackett–Luce over greedy's scores at
            :data:`TARGET_TEMPERATURE`).
        arms: the logging arms and their shares of the users.
        truth_users: users per slate size of the on-policy runs that measure the truth.
    """
    configs = {k: SlateEnvConfig(**SMALL_WORLD, **setting.world, slate_size=k) for k in SLATE_SIZES}
    greedy = fitted_greedy(configs[max(SLATE_SIZES)])  # one click model for every slate size
    loggers = {
        "random": RandomPolicy(),
        "greedy": greedy,
        "explore": SoftmaxPolicy(greedy, EXPLORE_TEMPERATURE, "explore"),
    }
    target = target or SoftmaxPolicy(greedy, TARGET_TEMPERATURE, "target", log_propensities=False)
    return World(setting, configs, loggers, target, on_policy_truth(target, configs, truth_users), arms)


def simulate_log(world: World, users: int, seed: int) -> LoggedRequests:
    """One experiment's log: every arm's share of ``users``, half on each slate size."""
    parts = []
    for a, (arm, share) in enumerate(world.arms):
        for k in SLATE_SIZES:
            recorder = RequestRecorder()
            count = max(2, round(users * share / len(SLATE_SIZES)))
            run_seed = seed * 1000 + a * 10 + k
            sim = build_simulator(world.configs[k], batch=count)  # one row per user: none idles
            evaluate_policy(world.loggers[arm], sim, count, run_seed, observers=[recorder])
            parts.append(recorder.requests(sim.catalog.embeddings))
    return LoggedRequests.concat(parts)


def replicate(world: World, users: int, seed: int, resamples: int) -> dict[str, tuple[float, float, float]]:
    """{estimator: (value, ci low, ci high)} of one simulated experiment."""
    played = replay(simulate_log(world, users, seed), world.target, world.loggers, seed=seed)
    if world.setting.level == "session":
        estimates = estimate_episodes(played.episodes, resamples=resamples, seed=seed)
        return {name: (e.value, e.ci_low, e.ci_high) for name, e in estimates.items()}
    estimates = estimate_all(played.slates, resamples=resamples, seed=seed)
    own_arm = replace(played.slates, logging_propensity=played.requests.propensity)
    estimates[OWN_ARM] = estimate_all(own_arm, resamples=resamples, seed=seed)["ips"]
    return {name: (e.value, e.ci_low, e.ci_high) for name, e in estimates.items()}


def _worker(job: tuple[Setting, int, list[int], int]) -> tuple[str, float, list[dict]]:
    setting, users, seeds, resamples = job
    torch.set_num_threads(1)  # a worker process per core
    world = build_world(setting)
    return setting.name, world.truth, [replicate(world, users, seed, resamples) for seed in seeds]


@dataclass(frozen=True)
class Row:
    setting: str
    level: str
    estimator: str
    coverage: float
    bias: float
    """Mean estimate minus the truth."""
    width: float
    """Mean interval width."""
    truth: float
    replications: int


def summarise(setting: Setting, truth: float, results: list[dict]) -> list[Row]:
    rows = []
    for name in results[0]:
        values = np.array([r[name] for r in results])  # [R, 3]
        covered = (values[:, 1] <= truth) & (truth <= values[:, 2])
        rows.append(
            Row(
                setting=setting.name,
                level=setting.level,
                estimator=name,
                coverage=float(covered.mean()),
                bias=float(values[:, 0].mean() - truth),
                width=float((values[:, 2] - values[:, 1]).mean()),
                truth=truth,
                replications=len(results),
            )
        )
    return rows


def run(
    replications: int, users: int, resamples: int, workers: int, settings: tuple[Setting, ...] = SETTINGS
) -> list[Row]:
    """Coverage rows of every setting; the replications of a setting are split over ``workers`` processes."""
    chunks = max(1, workers)
    jobs = [
        (setting, users, list(range(replications))[part::chunks], resamples)
        for setting in settings
        for part in range(chunks)
        if list(range(replications))[part::chunks]
    ]
    if workers > 1:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            done = pool.map(_worker, jobs, chunksize=1)
    else:
        done = [_worker(job) for job in jobs]
    rows = []
    for setting in settings:
        parts = [(truth, results) for name, truth, results in done if name == setting.name]
        rows += summarise(setting, parts[0][0], [r for _, results in parts for r in results])
    return rows


def table(rows: list[Row]) -> str:
    lines = [
        "| setting | level | estimator | coverage of 95% CI | mean bias | mean CI width | truth |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r.setting} | {r.level} | {r.estimator} | {r.coverage:.0%} | {r.bias:+.4f} | "
            f"{r.width:.4f} | {r.truth:.4f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--replications", type=int, default=50, help="simulated experiments per setting")
    parser.add_argument("--users", type=int, default=2000, help="users per simulated experiment")
    parser.add_argument("--resamples", type=int, default=400, help="bootstrap resamples per interval")
    parser.add_argument("--workers", type=int, default=2, help="processes")
    parser.add_argument("--json", help="also write the rows as JSON to this file")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    rows = run(args.replications, args.users, args.resamples, args.workers)
    print(
        f"## Off-policy interval coverage ({args.replications} replications per setting, {args.users} users each)\n"
    )
    print(table(rows))
    print(f"\n{time.perf_counter() - start:.0f} s with {args.workers} worker processes")
    if args.json:
        with open(args.json, "w") as out:
            json.dump([r.__dict__ for r in rows], out, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
