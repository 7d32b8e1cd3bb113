"""Training data for the encoder: next-item examples, validation users and the catalog, written as Parquet.

The dataset's temporal split holds out each user's last interaction for the final test (eval-retrieval);
the train part is split the same way once more, so validation (model selection) never sees the test item.
Examples come from the inner-train part only: for each user and each position t >= 1, the up to
``history`` items before t → the item at t.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rayrec import storage
from rayrec.data.io import load_dataset
from rayrec.data.split import cold_item_split, temporal_split
from rayrec.encoding import item_texts
from rayrec.errors import DataError
from rayrec.index.evaluate import HISTORY, EvalSet, make_eval_set, user_sequences

EXAMPLES_FILE = "examples.parquet"
VALIDATION_FILE = "validation.parquet"
CATALOG_FILE = "catalog.parquet"
PAD = -1


@dataclass(frozen=True)
class PreparedData:
    """Where the prepared files are and how big they are."""

    root: str
    """Directory (path or URI) holding the three files."""
    examples: int
    """Next-item training examples."""
    validation_users: int
    """Users in the validation set."""
    items: int
    """Catalog size."""

    @property
    def examples_uri(self) -> str:
        return storage.join(self.root, EXAMPLES_FILE)

    @property
    def validation_uri(self) -> str:
        return storage.join(self.root, VALIDATION_FILE)

    @property
    def catalog_uri(self) -> str:
        return storage.join(self.root, CATALOG_FILE)


def _write(table: pa.Table, uri: str) -> None:
    fs, path = storage.resolve(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    pq.write_table(table, path, filesystem=fs)


def _padded(rows: list[np.ndarray], width: int) -> pa.FixedSizeListArray:
    out = np.full((len(rows), width), PAD, dtype=np.int32)
    for i, r in enumerate(rows):
        out[i, width - len(r) :] = r  # right-aligned: the most recent item is always last
    return pa.FixedSizeListArray.from_arrays(pa.array(out.reshape(-1)), width)


def next_item_examples(sequences: list[np.ndarray], history: int) -> tuple[list[np.ndarray], np.ndarray]:
    """(histories, targets) for every position t >= 1 of every user's item sequence."""
    histories, targets = [], []
    for seq in sequences:
        for t in range(1, len(seq)):
            histories.append(seq[max(0, t - history) : t])
            targets.append(seq[t])
    return histories, np.asarray(targets, dtype=np.int32)


def prepare_training_data(
    data_dir: str, out_root: str, history: int, seed: int, cold_fraction: float = 0.0, split_seed: int = 0
) -> PreparedData:
    """Read ``data_dir``, split it, and write examples, validation users and catalog under ``out_root``.

    The test split is :func:`rayrec.data.split.cold_item_split` with ``cold_fraction`` and ``split_seed`` —
    the one ``eval-retrieval`` evaluates on — so neither test rows nor cold items reach training.
    """
    dataset = load_dataset(data_dir)
    texts = item_texts(dataset.items, source=storage.join(data_dir, "items.parquet"))
    item_ids = dataset.items.column("item_id").to_pylist()
    train, _test, _cold = cold_item_split(dataset.interactions, cold_fraction, split_seed)
    inner, valid = temporal_split(train)
    val = make_eval_set(inner, valid, item_ids, history=HISTORY)
    sequences = list(user_sequences(inner, {item: row for row, item in enumerate(item_ids)}).values())
    histories, targets = next_item_examples(sequences, history)
    if not len(targets):
        raise DataError(f"{data_dir}: no user has two or more training interactions; nothing to learn from")
    order = np.random.default_rng(seed).permutation(len(targets))
    _write(
        pa.table(
            {"history": _padded([histories[i] for i in order], history), "target": pa.array(targets[order])}
        ),
        storage.join(out_root, EXAMPLES_FILE),
    )
    _write(
        pa.table(
            {
                "history": pa.array([h.tolist() for h in val.histories], type=pa.list_(pa.int64())),
                "seen": pa.array([s.tolist() for s in val.seen], type=pa.list_(pa.int64())),
                "target": pa.array(val.targets, type=pa.int64()),
            }
        ),
        storage.join(out_root, VALIDATION_FILE),
    )
    _write(
        pa.table({"item_id": item_ids, "text": texts, "count": pa.array(val.train_counts, type=pa.int64())}),
        storage.join(out_root, CATALOG_FILE),
    )
    return PreparedData(root=out_root, examples=len(targets), validation_users=len(val), items=len(item_ids))


def read_validation(uri: str) -> EvalSet:
    """The validation :class:`rayrec.index.evaluate.EvalSet` written by :func:`prepare_training_data`."""
    fs, path = storage.resolve(uri)
    table = pq.read_table(path, filesystem=fs)
    catalog = pq.read_table(path.rsplit("/", 1)[0] + "/" + CATALOG_FILE, filesystem=fs, columns=["count"])
    return EvalSet(
        histories=[np.asarray(h, dtype=np.int64) for h in table.column("history").to_pylist()],
        seen=[np.asarray(s, dtype=np.int64) for s in table.column("seen").to_pylist()],
        targets=table.column("target").to_numpy().astype(np.int64),
        train_counts=catalog.column("count").to_numpy().astype(np.int64),
    )
