"""Running policies in the simulator: one session per simulated user, in the native vector env."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from envs.config import SlateEnvConfig
from rayrec.policy import SlatePolicy


@dataclass(frozen=True)
class SessionStats:
    """Per-user outcomes of one session each (U users).

    Attributes:
        returns: [U] float64 summed reward.
        clicks: [U] int64 clicks.
        lengths: [U] int64 steps until the session ended.
        left: [U] bool: the session ended because the user left (not the budget or the step cap).
    """

    returns: np.ndarray
    clicks: np.ndarray
    lengths: np.ndarray
    left: np.ndarray

    @property
    def ctr(self) -> float:
        """Clicks per shown slate over all sessions (pooled)."""
        return float(self.clicks.sum() / max(self.lengths.sum(), 1))

    def summary(self) -> dict[str, dict[str, float]]:
        """``sim/*`` metrics → mean and 95% CI (normal approximation; CTR by the delta method)."""
        out = {
            "sim/session_return": mean_ci(self.returns),
            "sim/session_length": mean_ci(self.lengths),
            "sim/clicks": mean_ci(self.clicks),
            "sim/left_rate": mean_ci(self.left.astype(np.float64)),
        }
        out["sim/ctr"] = ratio_ci(self.clicks.astype(np.float64), self.lengths.astype(np.float64))
        return out


def mean_ci(values: np.ndarray) -> dict[str, float]:
    """Mean with a normal 95% confidence interval."""
    values = np.asarray(values, dtype=np.float64)
    mean = float(values.mean())
    half = 1.96 * float(values.std(ddof=1)) / np.sqrt(len(values)) if len(values) > 1 else float("nan")
    return {"mean": mean, "ci95_low": mean - half, "ci95_high": mean + half}


def ratio_ci(numerator: np.ndarray, denominator: np.ndarray) -> dict[str, float]:
    """Ratio of sums with a delta-method 95% CI (sessions are the independent units)."""
    n = len(numerator)
    ratio = float(numerator.sum() / max(denominator.sum(), 1e-12))
    if n < 2:
        return {"mean": ratio, "ci95_low": float("nan"), "ci95_high": float("nan")}
    residual = (numerator - ratio * denominator) / max(denominator.mean(), 1e-12)
    half = 1.96 * float(residual.std(ddof=1)) / np.sqrt(n)
    return {"mean": ratio, "ci95_low": ratio - half, "ci95_high": ratio + half}


def run_sessions(
    policy: SlatePolicy | None, config: SlateEnvConfig, num_users: int, seed: int, env=None
) -> SessionStats:
    """One session for each of ``num_users`` users, all stepped together.

    Args:
        policy: chooses the slates; None shows uniformly random slates without a policy object.
        env: an existing :class:`envs.vector_env.SlateRecVectorEnv` with ``num_envs == num_users``
            (the oracle must run in the env it reads); by default one is built from ``config``.
    """
    from envs import make_vector_env

    env = env if env is not None else make_vector_env(config, num_users)
    sim_env = env.unwrapped
    obs, _ = env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    k = sim_env.config.slate_size
    returns = np.zeros(num_users)
    clicks = np.zeros(num_users, dtype=np.int64)
    lengths = np.zeros(num_users, dtype=np.int64)
    left = np.zeros(num_users, dtype=bool)
    active = np.ones(num_users, dtype=bool)
    while active.any():
        if policy is None:
            actions = np.argsort(rng.random((num_users, sim_env.config.num_candidates)), axis=1)[:, :k]
        else:
            actions = policy.select(obs, k, rng).indices
        obs, reward, terminated, truncated, info = env.step(actions)
        returns += np.where(active, reward, 0.0)
        clicks += active & info["clicked"]
        lengths += active
        left |= active & info["left"]
        active &= ~(terminated | truncated)
    return SessionStats(returns=returns, clicks=clicks, lengths=lengths, left=left)


def collect_random_slates(config: SlateEnvConfig, num_users: int, seed: int):
    """Exploration log: uniformly random slates over ``num_users`` sessions.

    Returns:
        (features [n, k, F], embeddings [n, k, d], clicks [n] position or -1), one row per shown slate.
    """
    from envs import make_vector_env

    env = make_vector_env(config, num_users)
    k = config.slate_size
    obs, _ = env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    feats, embs, clicks = [], [], []
    active = np.ones(num_users, dtype=bool)
    rows = np.arange(num_users)[:, None]
    while active.any():
        actions = np.argsort(rng.random((num_users, config.num_candidates)), axis=1)[:, :k]
        shown_f, shown_e = obs["features"][rows, actions], obs["candidates"][rows, actions]
        obs, _, terminated, truncated, info = env.step(actions)
        feats.append(shown_f[active])
        embs.append(shown_e[active])
        clicks.append(info["click_position"][active])
        active &= ~(terminated | truncated)
    return np.concatenate(feats), np.concatenate(embs), np.concatenate(clicks)
