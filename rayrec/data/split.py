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
