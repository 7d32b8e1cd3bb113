"""The one interface every slate policy implements: baselines, trained policies, the simulator's oracle.

The simulator, the A/B runner and the server all call :meth:`SlatePolicy.select` on a batch of
observations (see :mod:`rayrec.features` for their keys and shapes) and get a :class:`Slate` back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from rayrec.features import Observation


@dataclass(frozen=True)
class Slate:
    """A batch of slates, each chosen from its own row's K candidates.

    Attributes:
        indices: [B, k] int64 positions into the row's candidates, distinct within a row, in display order.
        scores: [B, k] float32 the policy's score of each shown candidate (higher is better).
        propensities: [B, k] float32 marginal probability that the policy shows this candidate at this
            position given the observation (the item-position propensity OPE needs); 1.0 for a
            deterministic policy.
    """

    indices: np.ndarray
    scores: np.ndarray
    propensities: np.ndarray

    def __post_init__(self) -> None:
        if self.indices.ndim != 2 or self.indices.shape != self.scores.shape:
            raise ValueError(
                f"Slate: indices {self.indices.shape} and scores {self.scores.shape} must both be [B, k]"
            )
        if self.propensities.shape != self.indices.shape:
            raise ValueError(f"Slate: propensities {self.propensities.shape} must be {self.indices.shape}")


@runtime_checkable
class SlatePolicy(Protocol):
    """Chooses k of K candidates for each row of a batch."""

    name: str
    """Short name used in logs, reports and the event log's ``policy`` column."""

    def select(self, obs: Observation, slate_size: int, rng: np.random.Generator | None = None) -> Slate:
        """Choose a slate of ``slate_size`` distinct candidates for every row of ``obs``."""
        ...

    def position_marginals(self, obs: Observation, slate_size: int) -> np.ndarray:
        """[B, k, K] probability that candidate j is shown at position p (rows over j sum to 1)."""
        ...
