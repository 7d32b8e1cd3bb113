"""Counter-based random numbers: draw ``k`` of item ``i`` is a pure function of ``(seed, stream, i, k)``.

A stateful generator makes an item's attributes depend on how many items were drawn before it, so a
world written in 10k-item chunks would differ from one written in 100k-item chunks. Hashing the
item's index instead (SplitMix64's finaliser, vectorised in NumPy) makes every item reproducible on
its own: any subset of a 1M-item catalog (one chunk, or the few candidates a simulated user sees) can
be materialised without generating the rest.

References:
    Steele, Lea and Flood. "Fast splittable pseudorandom number generators." OOPSLA 2014 (SplitMix64).
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np


class Stream(IntEnum):
    """One independent random stream per kind of draw in a world (hashed or seeding a generator)."""

    CENTROIDS = 1
    TOPIC_PRIOR = 2
    ITEM = 3
    EMBEDDING_NOISE = 4
    TEXT = 5
    USERS = 6
    VOCABULARY = 7


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MUL1 = np.uint64(0xBF58476D1CE4E5B9)
_MUL2 = np.uint64(0x94D049BB133111EB)
_TO_UNIT = 2.0**-53


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on a uint64 array (wraps modulo 2**64, in place)."""
    x ^= x >> np.uint64(30)
    x *= _MUL1
    x ^= x >> np.uint64(27)
    x *= _MUL2
    x ^= x >> np.uint64(31)
    return x


def _row_keys(seed: int, stream: int, index: np.ndarray) -> np.ndarray:
    base = _mix(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))
    base = _mix(base ^ np.uint64(stream))
    return _mix(np.asarray(index, dtype=np.uint64) * _GOLDEN + base)  # [n]


def hashed_uniform(seed: int, stream: int, index: np.ndarray, width: int | None = None) -> np.ndarray:
    """Uniform floats in (0, 1), one (or ``width``) per index.

    Args:
        seed: the world's seed.
        stream: which attribute is drawn (different streams are independent).
        index: [n] non-negative integers (item or user indices).
        width: draws per index; ``None`` for one.

    Returns:
        [n] or [n, width] float64 in the open interval (0, 1).
    """
    keys = _row_keys(seed, stream, index)  # [n]
    if width is None:
        bits = _mix(keys.copy())
    else:
        cols = np.arange(1, width + 1, dtype=np.uint64) * _MUL2  # [width]
        bits = _mix(keys[:, None] + cols[None, :])  # [n, width]
    # 53 random bits, shifted by half a step so that neither 0 nor 1 can occur (ndtri and log stay finite).
    return ((bits >> np.uint64(11)).astype(np.float64) + 0.5) * _TO_UNIT


def hashed_normal(seed: int, stream: int, index: np.ndarray, width: int) -> np.ndarray:
    """[n, width] standard normal draws by inverse CDF of :func:`hashed_uniform`."""
    from scipy.special import ndtri  # here, not at import: the CLI's parser imports this module

    return ndtri(hashed_uniform(seed, stream, index, width))
