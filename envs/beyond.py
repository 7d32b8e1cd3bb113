"""Beyond-accuracy metrics observed in the rollout engine: what every simulated user was shown.

:class:`BeyondAccuracyObserver` is an observer of :func:`envs.rollout.run_sessions`: from every step's
:class:`~envs.rollout.StepRecord` it accumulates each user's intra-list diversity, novelty and calibration
(per slate, then averaged over the user's slates) and every impression (for coverage and exposure Gini).
:func:`evaluate_beyond` runs a policy with it and returns the session outcomes with those per-user values
filled in, plus the :class:`rayrec.metrics.beyond.Exposure` of the run; :func:`run_values` reduces that pair
to the point values a policy table shows. The formulas are in :mod:`rayrec.metrics.beyond`; the names in
:mod:`rayrec.metrics.session`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from envs.catalog import ItemCatalog
from envs.rollout import Observer, StepRecord, evaluate_policy
from envs.simulator import SlateSimulator
from rayrec.metrics.beyond import (
    Exposure,
    calibration_kl,
    category_mix,
    encode_categories,
    intra_list_diversity,
    novelty,
    self_information,
)
from rayrec.metrics.session import SessionOutcomes
from rayrec.slate_policy import SlatePolicy


class BeyondAccuracyObserver:
    """Accumulates the beyond-accuracy metrics of ``num_users`` users' sessions from rollout steps."""

    def __init__(self, catalog: ItemCatalog, num_users: int) -> None:
        self.catalog = catalog
        self.num_users = num_users
        self.codes, self.names = encode_categories(catalog.categories, catalog.size)
        self.information = self_information(catalog.popularity_counts)  # [N] bits
        self.sums = {name: np.zeros(num_users) for name in ("ild", "novelty", "calibration")}
        self.slates = np.zeros(num_users)  # [n] slates shown
        self.calibrated = np.zeros(num_users)  # [n] slates with a history to be calibrated to
        self._users: list[np.ndarray] = []
        self._items: list[np.ndarray] = []

    def __call__(self, step: StepRecord) -> None:
        items = step.shown.items  # [R, k]
        valid = items >= 0
        users = step.users
        ild = intra_list_diversity(self.catalog.embeddings[np.maximum(items, 0)], valid)
        np.add.at(self.sums["ild"], users, ild)
        np.add.at(self.sums["novelty"], users, novelty(items, self.information))
        np.add.at(self.slates, users, 1.0)
        if step.history is not None:
            c = len(self.names)
            kl = calibration_kl(category_mix(step.history, self.codes, c), category_mix(items, self.codes, c))
            known = np.isfinite(kl)
            np.add.at(self.sums["calibration"], users[known], kl[known])
            np.add.at(self.calibrated, users[known], 1.0)
        self._users.append(np.repeat(users, valid.sum(axis=1)))
        self._items.append(items[valid])

    def per_user(self) -> dict[str, np.ndarray]:
        """``{ild, novelty, calibration}``: [n] each user's mean over their slates (NaN without any)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return {
                "ild": np.where(self.slates > 0, self.sums["ild"] / self.slates, np.nan),
                "novelty": np.where(self.slates > 0, self.sums["novelty"] / self.slates, np.nan),
                "calibration": np.where(
                    self.calibrated > 0, self.sums["calibration"] / self.calibrated, np.nan
                ),
            }

    def exposure(self) -> Exposure:
        """Every impression of the run, with the catalog's categories."""
        empty = np.zeros(0, np.int64)
        return Exposure(
            user=np.concatenate(self._users).astype(np.int64) if self._users else empty,
            item=np.concatenate(self._items).astype(np.int64) if self._items else empty,
            num_users=self.num_users,
            category_codes=self.codes,
            num_categories=len(self.names),
        )

    def fill(self, outcomes: SessionOutcomes) -> SessionOutcomes:
        """``outcomes`` with the per-user beyond-accuracy values of this run filled in."""
        return dataclasses.replace(outcomes, **self.per_user())


def evaluate_beyond(
    policy: SlatePolicy,
    sim: SlateSimulator,
    num_users: int,
    seed: int,
    *,
    observers: Sequence[Observer] = (),
    progress: str | None = None,
) -> tuple[SessionOutcomes, Exposure]:
    """:func:`envs.rollout.evaluate_policy` with the beyond-accuracy metrics measured too.

    Returns:
        (the outcomes with ``ild``, ``novelty`` and ``calibration`` per user, the run's exposure).
    """
    beyond = BeyondAccuracyObserver(sim.catalog, num_users)
    outcomes = evaluate_policy(
        policy, sim, num_users, seed, observers=[*observers, beyond], progress=progress
    )
    return beyond.fill(outcomes), beyond.exposure()


def run_values(outcomes: SessionOutcomes, exposure: Exposure) -> dict[str, float]:
    """The point values of one :func:`evaluate_beyond` run, keyed as :data:`rayrec.metrics.beyond.TABLE_COLUMNS`.

    ``ild`` and ``novelty``: the mean over users of each user's mean over their slates (users shown no slate
    left out); ``coverage``, ``gini_items`` and ``gini_categories``: of all the run's impressions together.
    """
    return {
        "ild": float(np.nanmean(outcomes.ild)),
        "novelty": float(np.nanmean(outcomes.novelty)),
        **exposure.corpus(),
    }
