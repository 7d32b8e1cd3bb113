"""Collaborative-filtering peers: item-kNN against a brute-force cosine, MF on a planted structure, cold items."""

from __future__ import annotations

import numpy as np
import pytest

from rayrec.cf_baselines import ItemKNN, MatrixFactorization, MFConfig, interaction_matrix
from rayrec.errors import ConfigError


def random_matrix(users: int = 30, items: int = 25, density: float = 0.2, seed: int = 0):
    rng = np.random.default_rng(seed)
    dense = (rng.random((users, items)) < density).astype(np.float32)
    dense[:, -3:] = 0.0  # the last three items are cold: no train interaction
    sequences = [np.flatnonzero(row) for row in dense]
    return dense, sequences


def test_interaction_matrix_is_binary_and_counts_repeats_once():
    matrix = interaction_matrix([np.array([0, 2, 2]), np.array([], dtype=np.int64), np.array([1])], 4)
    assert matrix.shape == (3, 4)
    assert matrix.toarray().tolist() == [[1, 0, 1, 0], [0, 0, 0, 0], [0, 1, 0, 0]]


def test_item_knn_scores_are_sums_of_column_cosines():
    dense, sequences = random_matrix()
    knn = ItemKNN(interaction_matrix(sequences, dense.shape[1]))
    norms = np.linalg.norm(dense, axis=0)
    normalized = dense / np.where(norms > 0, norms, 1.0)
    cosine = normalized.T @ normalized  # [N, N]
    histories = [np.array([0, 4, 7]), np.array([3]), np.array([1, 2])]
    expected = np.stack([cosine[h].sum(axis=0) for h in histories])
    np.testing.assert_allclose(knn.scores(histories), expected, rtol=1e-5, atol=1e-6)
    assert knn.cold[-3:].all() and not knn.cold[:-3].any()


def test_item_knn_never_ranks_cold_or_excluded_items():
    dense, sequences = random_matrix()
    knn = ItemKNN(interaction_matrix(sequences, dense.shape[1]))
    histories = [np.array([0, 1]), np.array([5])]
    exclude = [np.array([0, 1, 2]), np.array([5])]
    scores, ids = knn.search(histories, k=25, exclude=exclude)
    for row, banned in enumerate(exclude):
        ranked = ids[row][ids[row] >= 0]
        assert not set(ranked) & ({22, 23, 24} | set(banned.tolist()))
        assert np.all(np.diff(scores[row][ids[row] >= 0]) <= 0)  # best first
    # 25 items, 3 cold, the user's exclusions: the rest is padding
    assert (ids[0] == -1).sum() == 3 + 3 and (ids[1] == -1).sum() == 3 + 1


def planted_blocks(users_per_block: int = 20, items_per_block: int = 10, blocks: int = 3, seed: int = 0):
    """Users of block b interact with 6 random items of block b; one extra item column is never touched."""
    rng = np.random.default_rng(seed)
    sequences, block_of = [], []
    for b in range(blocks):
        for _ in range(users_per_block):
            sequences.append(rng.choice(items_per_block, 6, replace=False) + b * items_per_block)
            block_of.append(b)
    return sequences, np.array(block_of), blocks * items_per_block + 1


@pytest.mark.parametrize("kind", ["als", "bpr"])
def test_matrix_factorization_recovers_planted_blocks_and_skips_cold_items(kind):
    pytest.importorskip("implicit")
    sequences, block_of, n_items = planted_blocks()
    config = MFConfig(kind=kind, factors=4, iterations=15 if kind == "als" else 200, seed=0)
    mf = MatrixFactorization(interaction_matrix(sequences, n_items), config)
    assert mf.cold.tolist() == [False] * (n_items - 1) + [True]
    _, ids = mf.search(np.arange(len(sequences)), k=4, exclude=[np.asarray(s) for s in sequences])
    # each user's 4 unseen items of their own block should come first
    same_block = ids // 10 == block_of[:, None]
    assert same_block.mean() > 0.9
    assert not (ids == n_items - 1).any()


def test_mf_config_errors_are_clear():
    with pytest.raises(ConfigError, match="factors >= 1"):
        MFConfig(factors=0)
    with pytest.raises(ConfigError, match="'als' or 'bpr'"):
        MFConfig(kind="svd")  # type: ignore[arg-type]
