"""Temporal leave-last-out split for evaluation: each user's latest interaction is held out."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rayrec.data.validate import as_array


def temporal_split(interactions: pa.Table) -> tuple[pa.Table, pa.Table]:
    """Split interactions into ``(train, test)``.

    Per user the last interaction by ``(timestamp, row order)`` goes to test, so ties at the same second
    break the same way on every run; users with fewer than 2 interactions stay in train only (there
    would be no history to predict from). Both tables keep the input's columns and row order.

    Args:
        interactions: [M] rows with at least ``user_id`` and ``timestamp``.

    Returns:
        train [M - U'] and test [U'] rows, U' being the number of users with 2 or more interactions.
    """
    n = interactions.num_rows
    if n == 0:
        return interactions, interactions
    users = pc.dictionary_encode(as_array(interactions.column("user_id"))).indices.to_numpy(
        zero_copy_only=False
    )
    timestamps = as_array(interactions.column("timestamp")).to_numpy(zero_copy_only=False)
    order = np.lexsort((np.arange(n), timestamps, users))  # last key sorts first: user, then time, then row
    sorted_users = users[order]
    boundary = sorted_users[1:] != sorted_users[:-1]
    is_last = np.append(boundary, True)
    is_first = np.insert(boundary, 0, True)
    held_out = np.zeros(n, dtype=bool)
    held_out[order[is_last & ~is_first]] = True
    return interactions.filter(pa.array(~held_out)), interactions.filter(pa.array(held_out))


def cold_item_split(
    interactions: pa.Table, cold_fraction: float, seed: int = 0
) -> tuple[pa.Table, pa.Table, np.ndarray]:
    """Temporal leave-last-out with a share of the held-out items made cold: absent from every train row.

    After :func:`temporal_split`, ``round(cold_fraction · D)`` of the D distinct held-out items are drawn
    at random (``seed``) and every train interaction with them, by any user, is removed. Test keeps all
    its rows, so its targets are a mix of warm items (still in train) and cold ones (never in train), the
    setting of cold-start evaluation (Schein et al., "Methods and Metrics for Cold-Start Recommendations",
    SIGIR 2002). ``cold_fraction = 0`` is :func:`temporal_split` exactly.

    Args:
        interactions: [M] rows with at least ``user_id``, ``item_id`` and ``timestamp``.
        cold_fraction: share of the distinct held-out items to make cold, in [0, 1].
        seed: seed of the draw.

    Returns:
        train [M'] rows without any cold item, test [U'] rows (as :func:`temporal_split`), and the sorted
        cold item ids [C].
    """
    if not 0.0 <= cold_fraction <= 1.0:
        raise ValueError(f"cold_fraction must be in [0, 1], got {cold_fraction}")
    train, test = temporal_split(interactions)
    held_out = np.unique(np.asarray([str(i) for i in test.column("item_id").to_pylist()], dtype=object))
    n_cold = round(cold_fraction * len(held_out))
    if not n_cold:
        return train, test, held_out[:0]
    cold = np.sort(np.random.default_rng(seed).choice(held_out, size=n_cold, replace=False))
    cold_set = set(cold.tolist())
    keep = np.fromiter(
        (str(i) not in cold_set for i in train.column("item_id").to_pylist()), bool, train.num_rows
    )
    return train.filter(pa.array(keep)), test, cold
