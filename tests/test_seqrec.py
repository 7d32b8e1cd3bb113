"""The sequential retrieval model: it learns order where mean pooling cannot, ID dropout falls back to text, the
exported directory and index load back, and bad inputs fail with one clear line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from rayrec.cli import main as cli_main
from rayrec.data.io import write_interactions, write_items
from rayrec.errors import ArtifactError, ConfigError, DataError
from rayrec.features import l2_normalize
from rayrec.index.evaluate import EvalRetrievalConfig, evaluate_retrieval
from rayrec.index.faiss_index import IndexSpec, build_faiss_index
from rayrec.index.item_index import ItemIndex, write_index
from rayrec.seqrec.artifact import load_model, save_model, write_model_index
from rayrec.seqrec.model import SeqRecModel, SeqRecModelConfig
from trainers.seqrec import train_retrieval_model
from trainers.seqrec_config import SeqRecTrainConfig

ITEMS = 40
TEXT_DIM = 16


def write_pair_world(root: Path, users: int = 120, seed: int = 0) -> tuple[Path, Path]:
    """Data where only order tells the next item, plus a text index of random (uninformative) item embeddings.

    Items 0..19 are "A" items, 20..39 "B" items, and g is a fixed random bijection A → B. Each user sees 8
    distinct random A items; after each of the first 7 comes its image g(a) with probability 1/2, and the
    sequence ends with g(a8), the held-out item: the image of the last history item. A mean of the history
    cannot tell which A is last: the images of the other unpaired A's are unseen too and score the same.
    Returns (data dir, index dir).
    """
    rng = np.random.default_rng(seed)
    half = ITEMS // 2
    image = half + rng.permutation(half)  # g(a) for a in 0..19
    ids = [f"i{j}" for j in range(ITEMS)]
    rows: dict[str, list] = {"user_id": [], "item_id": [], "timestamp": []}
    for u in range(users):
        a = rng.choice(half, size=8, replace=False)
        sequence = []
        for x in a[:-1]:
            sequence += [x, image[x]] if rng.random() < 0.5 else [x]
        sequence += [a[-1], image[a[-1]]]
        for step, item in enumerate(sequence):
            rows["user_id"].append(f"u{u}")
            rows["item_id"].append(ids[item])
            rows["timestamp"].append(1_700_000_000 + 60 * step)
    data = root / "data"
    data.mkdir(parents=True)
    write_items(
        pa.table(
            {"item_id": ids, "title": ids, "text": ids, "category": ["c"] * ITEMS, "tags": [["c"]] * ITEMS}
        ),
        str(data),
    )
    n = len(rows["user_id"])
    write_interactions(
        pa.table(
            {
                "user_id": rows["user_id"],
                "item_id": rows["item_id"],
                "timestamp": pa.array(rows["timestamp"], pa.int64()),
                "event": ["click"] * n,
                "value": pa.array(np.ones(n), pa.float32()),
            }
        ),
        str(data),
    )
    return data, write_text_index(root / "text-index", ids, rng)


def write_text_index(out: Path, ids: list[str], rng: np.random.Generator, dim: int = TEXT_DIM) -> Path:
    vectors = l2_normalize(rng.normal(size=(len(ids), dim)).astype(np.float32))
    spec = IndexSpec().resolved(len(ids), dim)
    write_index(
        str(out), ids, vectors, np.zeros(len(ids)), build_faiss_index(vectors, spec), spec, "random-text"
    )
    return out


def small_config(data: Path, index: Path, out: Path, **overrides) -> SeqRecTrainConfig:
    values = dict(
        data=str(data),
        index=str(index),
        out=str(out),
        user_tower="sequential",  # the tower that reads order; tests of mean pooling ask for it
        dim=16,
        history=8,
        layers=1,
        heads=2,
        dropout=0.0,
        epochs=30,
        batch_size=16,
        lr=5e-3,
        hard_negatives=4,
        mine_depth=10,
        threads=1,
    )
    values.update(overrides)
    return SeqRecTrainConfig(**values)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[Path, Path]:
    return write_pair_world(tmp_path_factory.mktemp("pairs"))


@pytest.fixture(scope="module")
def trained(world, tmp_path_factory) -> dict[str, Path]:
    data, index = world
    root = tmp_path_factory.mktemp("models")
    out = {}
    for tower in ("sequential", "mean"):
        out[tower] = root / tower
        train_retrieval_model(small_config(data, index, out[tower], user_tower=tower))
    return out


def test_sequential_tower_learns_an_order_that_mean_pooling_cannot(world, trained):
    data, _ = world
    results = {
        tower: evaluate_retrieval(
            EvalRetrievalConfig(index=str(d / "index"), data=str(data), user_model=str(d), k=1, peers=False)
        )
        for tower, d in trained.items()
    }
    seq, mean = results["sequential"], results["mean"]
    popularity = seq["baselines"]["popularity"]["recall@1"]
    assert seq["users"] == 120 and seq["user_model"] == str(trained["sequential"])
    # The held-out item is g(last history item): the sequential tower can read it off the last position.
    assert seq["recall@1"] >= 0.5, seq["recall@1"]  # chance among the unseen items: about 1/30
    assert seq["recall@1"] >= mean["recall@1"] + 0.3, (seq["recall@1"], mean["recall@1"])
    assert seq["recall@1"] >= popularity + 0.3, (seq["recall@1"], popularity)


def test_export_and_load_round_trip(trained, tmp_path):
    model_dir = trained["sequential"]
    loaded = load_model(str(model_dir))
    index = ItemIndex.load(str(model_dir / "index"))
    vectors = loaded.check_index(index, "index", "model")
    np.testing.assert_allclose(vectors, index.embeddings, atol=1e-6)
    assert index.encoder == f"rayrec-seqrec:{model_dir}" and index.dim == 16
    assert json.loads((model_dir / "model.json").read_text())["split"]["holdout"] == "test"
    histories = [np.array([3, 5, 7]), np.array([1])]
    again_dir = tmp_path / "again"
    save_model(str(again_dir), loaded.model, loaded.item_ids, split=loaded.split)
    again = load_model(str(again_dir))
    np.testing.assert_array_equal(again.model.item_vectors(), loaded.model.item_vectors())
    np.testing.assert_array_equal(
        again.model.queries(vectors, histories), loaded.model.queries(vectors, histories)
    )
    write_model_index(again, str(again_dir), str(again_dir / "index"), np.zeros(ITEMS))
    np.testing.assert_array_equal(ItemIndex.load(str(again_dir / "index")).embeddings, index.embeddings)


def test_id_dropout_falls_back_to_the_text_part_and_cold_items_get_only_text():
    torch.manual_seed(0)
    text = torch.randn(30, 8)
    has_id = torch.ones(30, dtype=torch.bool)
    has_id[[4, 9]] = False  # never seen in training
    model = SeqRecModel(text, has_id, SeqRecModelConfig(text_dim=8, dim=8, heads=2, id_dropout=0.5))
    text_part = model.items.text_part().detach()
    served = torch.from_numpy(model.item_vectors())
    torch.testing.assert_close(served[[4, 9]], text_part[[4, 9]])
    assert not torch.allclose(served[has_id], text_part[has_id])  # warm items carry their ID part
    model.train()
    trained = model.items().detach()  # one training step's vectors: each item's ID part kept or dropped
    dropped = torch.isclose(trained, text_part, atol=1e-6).all(dim=1)
    kept = torch.isclose(trained, served, atol=1e-6).all(dim=1)
    assert bool((dropped | kept).all()) and bool(dropped[[4, 9]].all())
    assert 0 < int(dropped[has_id].sum()) < int(has_id.sum())  # about half of the warm items dropped


def test_cold_items_in_a_trained_model_get_exactly_their_text_part(world, tmp_path):
    data, index = world
    out = tmp_path / "cold"
    train_retrieval_model(small_config(data, index, out, epochs=2, cold_fraction=0.3))
    loaded = load_model(str(out))
    cold = ~loaded.model.items.has_id.numpy()
    assert loaded.split["cold_items"] > 0 and cold.sum() >= loaded.split["cold_items"]
    text_part = loaded.model.items.text_part().detach().numpy()
    np.testing.assert_allclose(loaded.model.item_vectors()[cold], text_part[cold], atol=1e-6)


def test_bad_inputs_fail_with_one_clear_line(world, trained, tmp_path, capsys):
    data, index = world
    with pytest.raises(ArtifactError, match="not an index directory"):
        train_retrieval_model(small_config(data, tmp_path / "missing", tmp_path / "m1"))
    other = write_text_index(
        tmp_path / "other-index", [f"x{j}" for j in range(ITEMS)], np.random.default_rng(1)
    )
    with pytest.raises(DataError, match="items are not in text index"):
        train_retrieval_model(small_config(data, other, tmp_path / "m2"))
    with pytest.raises(ConfigError, match="--heads 3 must divide --dim 16"):
        train_retrieval_model(small_config(data, index, tmp_path / "m3", heads=3))
    with pytest.raises(ConfigError, match="--hard-negatives"):
        small_config(data, index, tmp_path / "m4", hard_negatives=20)
    model_dir = trained["sequential"]
    # Wrong dimension: the 16-d text index is not the model's index (its dim happens to match here, so use a
    # 12-d one); then the model's own index but another split.
    narrow = write_text_index(
        tmp_path / "narrow", [f"i{j}" for j in range(ITEMS)], np.random.default_rng(2), 12
    )
    argv = ["eval-retrieval", "--data", str(data), "--no-peers", "--user-model", str(model_dir)]
    assert cli_main([*argv, "--index", str(narrow)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: index") and "12-d embeddings" in err and "16-d queries" in err
    assert "\n" not in err
    assert cli_main([*argv, "--index", str(index)]) == 2  # right dim, but not the model's vectors
    assert "was not built from user model" in capsys.readouterr().err
    assert cli_main([*argv, "--index", str(model_dir / "index"), "--cold-fraction", "0.2"]) == 2
    assert "was trained on the split cold_fraction=0.0" in capsys.readouterr().err
    assert cli_main([*argv[:-1], str(tmp_path / "nothing"), "--index", str(model_dir / "index")]) == 2
    assert "not a train-retrieval-model output" in capsys.readouterr().err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.json").write_text(json.dumps({"kind": "rayrec-seqrec", "config": {}, "item_ids": []}))
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ArtifactError, match="bad config"):
        load_model(str(broken))


def test_train_retrieval_model_command_writes_model_index_and_validation(world, tmp_path, capsys):
    data, index = world
    out = tmp_path / "cli"
    argv = ["train-retrieval-model", "--data", str(data), "--index", str(index), "--out", str(out)]
    small = ["--dim", "16", "--history", "8", "--layers", "1", "--epochs", "2", "--batch-size", "16"]
    assert (
        cli_main([*argv, *small, "--mine-depth", "10", "--hard-negatives", "4", "--holdout", "validation"])
        == 0
    )
    assert "best validation" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2] and "validation" in metrics["epochs"][-1]
    assert {p.name for p in out.iterdir()} >= {"model.safetensors", "model.json", "index", "config.yaml"}
