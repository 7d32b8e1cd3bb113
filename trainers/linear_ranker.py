"""The tuned ranker baselines: weights over the observation's features fitted by the cross-entropy method.

A hand-written linear rule on observable features already scores above a weak RL policy (issue #16), so a
win only means something against the *best* such rule. :func:`fit_linear_ranker` searches the weights of
:class:`rayrec.baselines.LinearRankerPolicy` (``w_f · features + w_e · embedding`` per candidate, top-k),
and :func:`fit_switch_ranker` those of :class:`rayrec.baselines.SwitchRankerPolicy` (two linear rankers and
a gate on the user's budget and session feedback: the observable form of the planner's spend-and-build
switches), by CEM on training users only: every candidate weight vector of one CEM iteration plays the
same users (common random numbers, so candidates are compared paired), a fresh set of users each
iteration, all from the ``train`` split and seeds disjoint from validation and evaluation.

    python -m trainers.linear_ranker --out runs/linear [--preset NAME] [--switch]

References:
    - Rubinstein, R. Y. (1999). "The Cross-Entropy Method for Combinatorial and Continuous Optimization."
      Methodology and Computing in Applied Probability 1.
    - Szita, I. & Lőrincz, A. (2006). "Learning Tetris Using the Noisy Cross-Entropy Method." Neural
      Computation 18(12) (the added noise that keeps the search from collapsing early).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from envs.config import SlateEnvConfig
from envs.factory import build_simulator
from envs.rollout import evaluate_policy
from envs.spec import SimulatorOptions, resolve_env_config
from rayrec.baselines import LinearRankerPolicy, ScoringPolicy, SwitchRankerPolicy
from rayrec.config import add_config_args, config_from_args, to_plain
from rayrec.errors import ConfigError, RayrecError
from rayrec.features import FEATURE_NAMES

TRAIN_SEED_OFFSET = 7_000_001
"""Seeds of the CEM's training users start here (validation and evaluation use ``1_000_003`` and up)."""


@dataclass(kw_only=True)
class CEMConfig:
    """The cross-entropy method's search settings."""

    iterations: int = 10
    """CEM iterations (each: sample a population, evaluate, refit the Gaussian to the elite)."""
    population: int = 16
    """Weight vectors evaluated per iteration."""
    elite_fraction: float = 0.25
    """Share of the population whose mean and spread become the next Gaussian."""
    init_std: float = 1.0
    """Initial standard deviation of every weight."""
    extra_std: float = 0.05
    """Noise added to the elite's standard deviation each iteration (Szita & Lőrincz 2006), decaying
    linearly to 0 over the iterations."""
    seed: int = 0
    """Seed of the sampled weights (and, offset, of the training users)."""

    def __post_init__(self) -> None:
        if self.iterations < 1 or self.population < 2:
            raise ConfigError(
                f"CEM: iterations >= 1 and population >= 2 (got {self.iterations}, {self.population})"
            )
        if not 0 < self.elite_fraction <= 1 or self.init_std <= 0 or self.extra_std < 0:
            raise ConfigError("CEM: elite_fraction in (0, 1], init_std > 0 and extra_std >= 0")


@dataclass(frozen=True)
class CEMResult:
    """Where CEM ended: the final mean (the answer), its spread and the search's history.

    Attributes:
        mean: [P] final Gaussian mean.
        std: [P] final standard deviation.
        history: one dict per iteration: ``best``, ``elite_mean`` (objective values), ``mean_norm``.
    """

    mean: np.ndarray
    std: np.ndarray
    history: list[dict[str, float]]


def cross_entropy_method(
    objective: Callable[[np.ndarray, int], np.ndarray], initial_mean: np.ndarray, config: CEMConfig
) -> CEMResult:
    """Maximise ``objective`` by CEM with a diagonal Gaussian.

    Args:
        objective: ``(weights [N, P], iteration) -> [N]`` values to maximise; all N of one call should be
            compared on the same random numbers.
        initial_mean: [P] start of the search.
    """
    rng = np.random.default_rng(config.seed)
    mean = np.asarray(initial_mean, dtype=np.float64).copy()
    std = np.full_like(mean, config.init_std)
    elite = max(1, round(config.elite_fraction * config.population))
    history = []
    for it in range(config.iterations):
        samples = mean + std * rng.standard_normal((config.population, len(mean)))  # [N, P]
        samples[0] = mean  # the current mean is always a candidate
        values = np.asarray(objective(samples, it), dtype=np.float64)  # [N]
        best = np.argsort(-values, kind="stable")[:elite]
        noise = config.extra_std * max(0.0, 1.0 - it / config.iterations)
        mean = samples[best].mean(axis=0)
        std = samples[best].std(axis=0) + noise
        history.append(
            {
                "best": float(values[best[0]]),
                "elite_mean": float(values[best].mean()),
                "mean_norm": float(np.linalg.norm(mean)),
            }
        )
    return CEMResult(mean=mean, std=std, history=history)


def fit_ranker(
    env_config: SlateEnvConfig,
    config: CEMConfig,
    users: int,
    build: Callable[[np.ndarray], ScoringPolicy],
    start: Callable[[int], np.ndarray],
) -> tuple[ScoringPolicy, CEMResult]:
    """CEM over the flat weights of the ranker ``build(weights)`` on ``env_config``'s simulator (its ``train``
    users), starting from ``start(d)`` [P] (d: the catalog's embedding dimension).

    Each iteration's candidates all play the same ``users`` fresh users (seed ``TRAIN_SEED_OFFSET + 1000 *
    config.seed + iteration``).
    """
    if env_config.user_split in ("validation", "test"):
        raise ConfigError(f"a tuned ranker is fitted on training users, not {env_config.user_split!r}")
    sim = build_simulator(env_config, batch=users)

    def objective(weights: np.ndarray, iteration: int) -> np.ndarray:
        seed = TRAIN_SEED_OFFSET + 1000 * config.seed + iteration
        return np.array([evaluate_policy(build(w), sim, users, seed).session_return.mean() for w in weights])

    result = cross_entropy_method(objective, start(sim.catalog.dim), config)
    return build(result.mean.astype(np.float32)), result


def fit_linear_ranker(
    env_config: SlateEnvConfig, config: CEMConfig, users: int = 128
) -> tuple[LinearRankerPolicy, CEMResult]:
    """CEM-tuned :class:`LinearRankerPolicy` (:func:`fit_ranker`), starting from the retrieval order
    (weight 1 on ``retrieval_score``, 0 elsewhere)."""
    names = env_config.feature_names
    num_features = len(names)

    def start(dim: int) -> np.ndarray:
        weights = np.zeros(num_features + dim)
        weights[FEATURE_NAMES.index("retrieval_score")] = 1.0
        return weights

    def build(weights: np.ndarray) -> LinearRankerPolicy:
        return LinearRankerPolicy(*LinearRankerPolicy.split(weights, num_features), feature_names=names)

    return fit_ranker(env_config, config, users, build, start)


def fit_switch_ranker(
    env_config: SlateEnvConfig, config: CEMConfig, users: int = 128
) -> tuple[SwitchRankerPolicy, CEMResult]:
    """CEM-tuned :class:`SwitchRankerPolicy` (:func:`fit_ranker`), starting from both rankers in retrieval
    order and a gate that is always closed."""
    names = env_config.feature_names

    def start(dim: int) -> np.ndarray:
        weights = np.zeros(SwitchRankerPolicy.num_weights(names))
        for offset in (0, len(names)):  # both rankers
            weights[offset + FEATURE_NAMES.index("retrieval_score")] = 1.0
        return weights

    return fit_ranker(
        env_config, config, users, lambda w: SwitchRankerPolicy.from_flat(w, names, env_config.budget), start
    )


@dataclass(kw_only=True)
class FitLinearConfig(SimulatorOptions, CEMConfig):
    """``python -m trainers.linear_ranker``: fit the linear ranker by CEM on training users and save it."""

    out: str
    """Directory to write ``linear_ranker.json`` to (then usable as a policy: ``rayrec simulate --policy DIR``)."""
    users: int = 128
    """Training users each candidate weight vector plays per CEM iteration."""
    switch: bool = False
    """Fit the switch ranker (two linear rankers and a gate on the user) instead of one linear ranker."""


def fit_and_save(cfg: FitLinearConfig) -> LinearRankerPolicy | SwitchRankerPolicy:
    env_config = resolve_env_config(cfg, user_split="train")
    cem = CEMConfig(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(CEMConfig)})
    fit = fit_switch_ranker if cfg.switch else fit_linear_ranker
    policy, result = fit(env_config, cem, cfg.users)
    policy.save(
        cfg.out,
        {
            "cem": dataclasses.asdict(cem),
            "users": cfg.users,
            "history": result.history,
            "env": to_plain(env_config),
        },
    )
    return policy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainers.linear_ranker", description=__doc__)
    add_config_args(parser, FitLinearConfig)
    try:
        cfg = config_from_args(FitLinearConfig, parser.parse_args(argv))
        fit_and_save(cfg)
    except RayrecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{'switch' if cfg.switch else 'linear'} ranker → {cfg.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
