"""Per-user outcome metrics of an A/B test: the user is the randomisation unit, so one row per user.

Each simulated user lives one whole session; its outcomes are :class:`rayrec.metrics.session.SessionOutcomes`
(the metrics vocabulary: ``session_return``, ``clicks``, ``ctr``, ``session_length``), plus the user's id and
arm. ``ctr`` is clicks per impression, a ratio of sums: its per-user values are the delta-method linearisation
around the arm's own ratio (:meth:`UserMetrics.arm_values`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rayrec import storage
from rayrec.errors import DataError
from rayrec.metrics.session import BEYOND_PER_USER, REPORTED, SessionOutcomes

METRICS = REPORTED
"""Metric names, in report order."""

USERS_FILE = "users.parquet"
OUTCOME_FIELDS = tuple(f.name for f in fields(SessionOutcomes))


@dataclass(frozen=True, kw_only=True)
class UserMetrics(SessionOutcomes):
    """Outcomes of n users, in the order they arrived.

    Attributes:
        user_id: [n] str pseudonymized user ids (unique).
        arm: [n] str arm each user was assigned to.
        (and every :class:`SessionOutcomes` field, [n] each)
    """

    user_id: np.ndarray
    arm: np.ndarray

    def __post_init__(self) -> None:
        super().__post_init__()
        n = len(self.session_return)
        for name in ("user_id", "arm"):
            if np.shape(getattr(self, name)) != (n,):
                raise ValueError(
                    f"UserMetrics.{name}: shape {np.shape(getattr(self, name))}, expected ({n},)"
                )
        if len(set(self.user_id.tolist())) != n:
            raise DataError("UserMetrics: user ids must be unique")

    @classmethod
    def of(cls, outcomes: SessionOutcomes, user_id: np.ndarray, arm: np.ndarray) -> UserMetrics:
        """Outcomes of users ``user_id`` [n] in ``arm`` [n]."""
        return cls(user_id=user_id, arm=arm, **{name: getattr(outcomes, name) for name in OUTCOME_FIELDS})

    def metric(self, name: str) -> np.ndarray:
        """[n] per-user values of metric ``name``, each user's linearised around its own arm's ratio.

        For a mean metric these are the raw values; for ``ctr`` each arm's values average to that arm's
        clicks per impression, so comparisons of arms are delta-method comparisons of the ratios.
        """
        out = np.empty(len(self))
        for arm in np.unique(self.arm.astype(str)):
            mask = self.arm_mask(arm)
            out[mask] = self.arm_values(name, arm)
        return out

    def arm_values(self, name: str, arm: str) -> np.ndarray:
        """[n_arm] per-user values of ``name`` among ``arm``'s users (a ratio linearised around that arm's)."""
        return self.take(np.flatnonzero(self.arm_mask(arm))).values(name)

    def arm_mask(self, arm: str) -> np.ndarray:
        """[n] bool, True for users of ``arm``."""
        return self.arm == arm

    def to_table(self) -> pa.Table:
        return pa.table(
            {
                "user_id": pa.array(self.user_id.tolist(), pa.string()),
                "arm": pa.array(self.arm.tolist(), pa.string()),
                **{
                    name: pa.array(np.asarray(getattr(self, name), np.float64), pa.float64())
                    for name in OUTCOME_FIELDS
                    if name != "left"
                },
                "left": pa.array(np.asarray(self.left, bool), pa.bool_()),
            }
        )

    @classmethod
    def from_table(cls, table: pa.Table) -> UserMetrics:
        # older tables lack these
        required = {"user_id", "arm", *OUTCOME_FIELDS} - {"left", "sessions", *BEYOND_PER_USER}
        missing = required - set(table.column_names)
        if missing:
            raise DataError(f"per-user metrics table lacks columns {sorted(missing)}")
        columns = {
            name: table.column(name).to_numpy() for name in OUTCOME_FIELDS if name in table.column_names
        }
        return cls(
            user_id=np.asarray(table.column("user_id").to_pylist(), dtype=object),
            arm=np.asarray(table.column("arm").to_pylist(), dtype=object),
            **columns,
        )

    @classmethod
    def concat(cls, parts: list[UserMetrics]) -> UserMetrics:
        return cls(**{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(cls)})

    def take(self, rows: np.ndarray) -> UserMetrics:
        """The users at ``rows`` [m] (an index array), in that order."""
        return type(self)(**{f.name: getattr(self, f.name)[rows] for f in fields(self)})

    def save(self, out_dir: str) -> str:
        """Write ``users.parquet`` under ``out_dir``; returns its URI."""
        target = storage.join(out_dir, USERS_FILE)
        fs, path = storage.resolve(target)
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        pq.write_table(self.to_table(), path, filesystem=fs)
        return target

    @classmethod
    def load(cls, run_dir: str) -> UserMetrics:
        """Read ``users.parquet`` from a ``rayrec ab`` output directory."""
        target = storage.join(run_dir, USERS_FILE)
        if not storage.exists(target):
            raise DataError(f"{target}: no per-user metrics (is {run_dir} a `rayrec ab` output directory?)")
        fs, path = storage.resolve(target)
        return cls.from_table(pq.read_table(path, filesystem=fs))
