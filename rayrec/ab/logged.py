"""Logged requests straight from a rollout: :class:`RequestRecorder` keeps a simulation's steps as
:class:`rayrec.logs.requests.LoggedRequests` (what off-policy evaluation reads) without writing a log — the
coverage benchmark runs hundreds of simulated experiments that way.
"""

from __future__ import annotations

import numpy as np

from envs.rollout import StepRecord
from rayrec.errors import DataError
from rayrec.features import FEATURE_NAMES
from rayrec.logs.requests import LoggedRequests

__all__ = ["LoggedRequests", "RequestRecorder"]


class RequestRecorder:
    """A rollout observer (:func:`envs.rollout.run_sessions`) that keeps every step as logged requests.

    It records what :class:`rayrec.ab.simulate.EventLogObserver` writes to an event log — the ranker's
    observation, the slate, its propensities, the click — in memory; :meth:`requests` returns them as
    :class:`LoggedRequests`, each user's steps in the order they happened.
    """

    def __init__(self) -> None:
        self._steps: list[StepRecord] = []

    def __call__(self, step: StepRecord) -> None:
        if step.shown.positions is None:
            raise DataError("RequestRecorder: the slate source did not say which candidates it showed")
        self._steps.append(step)

    def requests(
        self, item_embeddings: np.ndarray, feature_names: tuple[str, ...] = FEATURE_NAMES
    ) -> LoggedRequests:
        """Everything recorded so far; ``item_embeddings`` [N, d] are the catalog rows candidates refer to,
        ``feature_names`` the simulator's (``SlateEnvConfig.feature_names``)."""
        if not self._steps:
            raise DataError("RequestRecorder: no steps were recorded")
        steps = self._steps
        users = np.concatenate([s.users for s in steps])
        order = np.argsort(users, kind="stable")  # steps were recorded in time order
        shown = np.concatenate([s.shown.positions for s in steps])[order]
        clicked = np.concatenate([s.click_position for s in steps])[order]
        reward = np.zeros(shown.shape)
        rows = np.flatnonzero(clicked >= 0)
        reward[rows, clicked[rows]] = np.concatenate([s.reward for s in steps])[order][rows]
        policies = np.concatenate([s.shown.policy for s in steps])[order].astype(str)
        names, logger = np.unique(policies, return_inverse=True)
        return LoggedRequests(
            user=np.unique(users, return_inverse=True)[1][order].astype(np.int64),
            logger=logger.astype(np.int64),
            logger_names=tuple(names.tolist()),
            candidates=np.concatenate([s.candidates for s in steps])[order],
            item_embeddings=item_embeddings,
            features=np.concatenate([s.obs["features"] for s in steps])[order],
            profile=np.concatenate([s.obs["profile"] for s in steps])[order],
            budget=np.concatenate([s.obs["budget"] for s in steps])[order],
            shown=shown,
            mask=np.ones(shown.shape, dtype=bool),
            propensity=np.concatenate([s.shown.propensities for s in steps])[order].astype(np.float64),
            reward=reward,
            feature_names=feature_names,
        )
