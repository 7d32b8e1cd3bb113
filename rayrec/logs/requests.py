"""Logged requests as arrays: what off-policy evaluation and offline learning read.

One row per request that a logging policy ranked, grouped by user and in each user's time order, so a
user's rows are the user's episode (every session the log holds, in order). Each row keeps what the
ranker saw (candidates, features, profile, budget: :mod:`rayrec.features`), the slate it showed, the
propensities it logged and the reward each shown item earned. :func:`rayrec.logs.reader.logged_requests`
builds it from an event log; :class:`rayrec.ab.logged.RequestRecorder` from a rollout, without writing a log.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import numpy as np

from rayrec.errors import ConfigError, DataError
from rayrec.features import FEATURE_NAMES, select_features
from rayrec.slate_policy import Observation


@dataclass(frozen=True)
class LoggedRequests:
    """n logged requests of U users (K candidates each, slates of up to k positions, A logging policies).

    Attributes:
        user: [n] int64 user of each row, 0..U-1, non-decreasing: a user's rows are contiguous and in time
            order.
        logger: [n] int64 index into ``logger_names`` of the policy that ranked the request.
        logger_names: A policy names.
        candidates: [n, K] int64 rows of ``item_embeddings``: the candidates in retrieval order.
        item_embeddings: [N, d] float32 the catalog's (or index's) normalised embeddings.
        features: [n, K, F] float32 candidate features named ``feature_names``.
        profile: [n, d] float32 the user's profile as the ranker saw it.
        budget: [n, 1] float32 the ``budget`` feature the ranker saw.
        shown: [n, k] int64 candidate index shown at each position (0 where ``mask`` is False).
        mask: [n, k] bool, True for the first ``slate_size`` positions of each row.
        propensity: [n, k] float64 logged propensity of each shown item (1.0 where ``mask`` is False).
        reward: [n, k] float64 reward each shown item earned (click value; 0 without a click).
        source: where the rows come from, for messages (an events directory, or ``simulation``).
        feature_names: the F logged features, in order: :data:`rayrec.features.FEATURE_NAMES`, and
            ``item_rating`` from a server over a rated index (or a simulator's appended columns).
    """

    user: np.ndarray
    logger: np.ndarray
    logger_names: tuple[str, ...]
    candidates: np.ndarray
    item_embeddings: np.ndarray
    features: np.ndarray
    profile: np.ndarray
    budget: np.ndarray
    shown: np.ndarray
    mask: np.ndarray
    propensity: np.ndarray
    reward: np.ndarray
    source: str = "simulation"
    feature_names: tuple[str, ...] = FEATURE_NAMES

    def __post_init__(self) -> None:
        n, big_k = self.candidates.shape
        if len(self.feature_names) != self.features.shape[-1]:
            raise DataError(
                f"{self.source}: {self.features.shape[-1]} features per candidate but "
                f"{len(self.feature_names)} names {list(self.feature_names)}"
            )
        k = self.shown.shape[1] if self.shown.ndim == 2 else -1
        expected = {
            "user": (n,),
            "logger": (n,),
            "features": (n, big_k, self.features.shape[-1]),
            "profile": (n, self.item_embeddings.shape[1]),
            "budget": (n, 1),
            "shown": (n, k),
            "mask": (n, k),
            "propensity": (n, k),
            "reward": (n, k),
        }
        for name, shape in expected.items():
            if getattr(self, name).shape != shape:
                raise DataError(
                    f"{self.source}: {name} has shape {getattr(self, name).shape}, expected {shape} "
                    f"(n={n} requests, K={big_k} candidates, k={k} positions, "
                    f"d={self.item_embeddings.shape[1]} embedding dims)"
                )
        if n == 0:
            raise DataError(f"{self.source}: no logged requests")
        if self.user[0] != 0 or (np.diff(self.user) < 0).any() or (np.diff(self.user) > 1).any():
            raise ValueError("LoggedRequests.user must number users 0..U-1 in non-decreasing row order")
        if not self.mask[:, 0].all() or (self.mask[:, 1:] & ~self.mask[:, :-1]).any():
            raise ValueError("LoggedRequests.mask must mark a non-empty prefix of positions in every row")
        if not 0 <= self.logger.min() <= self.logger.max() < len(self.logger_names):
            raise ValueError(f"LoggedRequests.logger must index logger_names {self.logger_names}")
        if (self.shown < 0).any() or (self.shown >= big_k).any():
            raise ValueError(f"LoggedRequests.shown must be candidate indices in 0..{big_k - 1}")
        prop = self.propensity[self.mask]
        if not ((prop > 0) & (prop <= 1)).all():
            raise DataError(f"{self.source}: logged propensities must be in (0, 1]")

    @property
    def num_users(self) -> int:
        return int(self.user[-1]) + 1

    @property
    def num_candidates(self) -> int:
        return self.candidates.shape[1]

    @property
    def slate_size(self) -> np.ndarray:
        """[n] positions shown per request."""
        return self.mask.sum(axis=1)

    def observation(self, rows: np.ndarray, names: tuple[str, ...] | None = None) -> Observation:
        """The observation the ranker saw at ``rows`` [b] (:mod:`rayrec.features`; [b, ...] per key), with
        the logged features ``names`` (:func:`rayrec.features.select_features`; None: all of them).

        Raises:
            DataError: ``names`` asks for a feature the log does not hold.
        """
        features = self.features[rows]
        if names is not None:
            try:
                features = select_features(features, self.feature_names, names)
            except ConfigError as exc:
                raise DataError(f"{self.source}: {exc}") from None
        return {
            "profile": self.profile[rows],
            "candidates": self.item_embeddings[self.candidates[rows]],
            "features": features,
            "budget": self.budget[rows],
        }

    def take_users(self, keep: np.ndarray) -> LoggedRequests:
        """The rows of the users where ``keep`` [U] is True, users renumbered in order."""
        rows = keep[self.user]
        renumber = np.cumsum(keep) - 1
        per_row = {
            f.name: getattr(self, f.name)[rows]
            for f in fields(self)
            if f.name not in ("logger_names", "item_embeddings", "source", "feature_names")
        }
        return replace(self, **per_row | {"user": renumber[self.user[rows]]})

    @classmethod
    def concat(cls, parts: Sequence[LoggedRequests]) -> LoggedRequests:
        """The users of ``parts`` one after another (one catalog and feature set; slates padded to the longest)."""
        features = {part.feature_names for part in parts}
        if len(features) > 1:
            raise DataError(f"{parts[0].source}: parts with different features {sorted(features)}")
        names = tuple(sorted({name for part in parts for name in part.logger_names}))
        width = max(part.shown.shape[1] for part in parts)

        def pad(value: np.ndarray, fill) -> np.ndarray:
            return np.pad(value, ((0, 0), (0, width - value.shape[1])), constant_values=fill)

        offsets = np.cumsum([0] + [part.num_users for part in parts[:-1]])
        return cls(
            user=np.concatenate([part.user + offset for part, offset in zip(parts, offsets, strict=True)]),
            logger=np.concatenate(
                [np.searchsorted(names, np.asarray(p.logger_names))[p.logger] for p in parts]
            ),
            logger_names=names,
            candidates=np.concatenate([part.candidates for part in parts]),
            item_embeddings=parts[0].item_embeddings,
            features=np.concatenate([part.features for part in parts]),
            profile=np.concatenate([part.profile for part in parts]),
            budget=np.concatenate([part.budget for part in parts]),
            shown=np.concatenate([pad(part.shown, 0) for part in parts]),
            mask=np.concatenate([pad(part.mask, False) for part in parts]),
            propensity=np.concatenate([pad(part.propensity, 1.0) for part in parts]),
            reward=np.concatenate([pad(part.reward, 0.0) for part in parts]),
            source=parts[0].source,
            feature_names=parts[0].feature_names,
        )
