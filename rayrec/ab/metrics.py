"""Per-user outcome metrics of an A/B test: the user is the randomisation unit, so one row per user.

Each simulated user lives one whole session: ``session_return`` (total reward), ``clicks``, ``ctr``
(clicks / items shown, a per-user ratio so every user weighs the same) and ``session_length`` (requests).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rayrec import storage
from rayrec.errors import DataError

METRICS = ("session_return", "clicks", "ctr", "session_length")
"""Metric names, in report order."""

USERS_FILE = "users.parquet"


@dataclass(frozen=True)
class UserMetrics:
    """Outcomes of n users, in the order they arrived.

    Attributes:
        user_id: [n] str pseudonymized user ids (unique).
        arm: [n] str arm each user was assigned to.
        session_return: [n] float64 total reward of the session.
        clicks: [n] float64 clicks in the session.
        impressions: [n] float64 items shown in the session.
        session_length: [n] float64 requests (slates) in the session.
    """

    user_id: np.ndarray
    arm: np.ndarray
    session_return: np.ndarray
    clicks: np.ndarray
    impressions: np.ndarray
    session_length: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.user_id)
        for name in ("arm", "session_return", "clicks", "impressions", "session_length"):
            if np.shape(getattr(self, name)) != (n,):
                raise ValueError(
                    f"UserMetrics.{name}: shape {np.shape(getattr(self, name))}, expected ({n},)"
                )
        if len(set(self.user_id.tolist())) != n:
            raise DataError("UserMetrics: user ids must be unique")

    def __len__(self) -> int:
        return len(self.user_id)

    @property
    def ctr(self) -> np.ndarray:
        """[n] clicks per item shown (0 for a user who was shown nothing)."""
        return np.divide(self.clicks, self.impressions, out=np.zeros(len(self)), where=self.impressions > 0)

    def metric(self, name: str) -> np.ndarray:
        """[n] values of metric ``name`` (one of :data:`METRICS`)."""
        if name not in METRICS:
            raise DataError(f"unknown metric {name!r}; known: {', '.join(METRICS)}")
        return np.asarray(getattr(self, name), dtype=np.float64)

    def arm_mask(self, arm: str) -> np.ndarray:
        """[n] bool, True for users of ``arm``."""
        return self.arm == arm

    def to_table(self) -> pa.Table:
        return pa.table(
            {
                "user_id": pa.array(self.user_id.tolist(), pa.string()),
                "arm": pa.array(self.arm.tolist(), pa.string()),
                "session_return": pa.array(self.session_return, pa.float64()),
                "clicks": pa.array(self.clicks, pa.float64()),
                "impressions": pa.array(self.impressions, pa.float64()),
                "session_length": pa.array(self.session_length, pa.float64()),
            }
        )

    @classmethod
    def from_table(cls, table: pa.Table) -> UserMetrics:
        missing = {f.name for f in cls.__dataclass_fields__.values()} - set(table.column_names)
        if missing:
            raise DataError(f"per-user metrics table lacks columns {sorted(missing)}")
        return cls(
            user_id=np.asarray(table.column("user_id").to_pylist(), dtype=object),
            arm=np.asarray(table.column("arm").to_pylist(), dtype=object),
            **{
                name: table.column(name).to_numpy()
                for name in ("session_return", "clicks", "impressions", "session_length")
            },
        )

    @classmethod
    def concat(cls, parts: list[UserMetrics]) -> UserMetrics:
        return cls(
            **{name: np.concatenate([getattr(p, name) for p in parts]) for name in cls.__dataclass_fields__}
        )

    def take(self, rows: np.ndarray) -> UserMetrics:
        """The users at ``rows`` [m] (an index array), in that order."""
        return type(self)(**{name: getattr(self, name)[rows] for name in self.__dataclass_fields__})

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
