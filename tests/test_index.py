"""Item index: FAISS types, exact exclusion, integrity checks, build-index and eval-retrieval through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _retrieval_world import write_tiny_world

from rayrec.cf_baselines import implicit_available
from rayrec.cli import main
from rayrec.encoding import build_tiny_encoder, item_texts
from rayrec.errors import ArtifactError, ConfigError
from rayrec.features import l2_normalize
from rayrec.index import INDEX_TYPES, IndexSpec, ItemIndex
from rayrec.index.evaluate import EvalRetrievalConfig, evaluate_retrieval
from rayrec.index.exact import exact_search, popularity_search
from rayrec.index.faiss_index import build_faiss_index
from rayrec.index.item_index import FAISS_FILE, META_FILE, write_index
from rayrec.metrics.retrieval import mrr, ndcg_at_k, ranking_metrics, recall_at_k, target_ranks


def clustered_vectors(n: int, dim: int, clusters: int = 20, seed: int = 0) -> np.ndarray:
    """Normalised Gaussian-mixture vectors: ANN recall is meaningful only on data with neighbourhoods."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    return l2_normalize(centres[rng.integers(0, clusters, n)] + 0.3 * rng.normal(size=(n, dim)))


def _write(tmp_path: Path, vectors: np.ndarray, index_type: str) -> Path:
    spec = IndexSpec(type=index_type).resolved(len(vectors), vectors.shape[1])
    ids = [f"item-{i}" for i in range(len(vectors))]
    popularity = np.arange(len(vectors))[::-1]
    out = tmp_path / index_type
    write_index(str(out), ids, vectors, popularity, build_faiss_index(vectors, spec), spec, encoder="test")
    return out


@pytest.mark.parametrize("index_type", INDEX_TYPES)
def test_each_index_type_round_trips_and_excludes_exactly(tmp_path, index_type):
    vectors = clustered_vectors(2000, 32)
    index = ItemIndex.load(str(_write(tmp_path, vectors, index_type)))
    assert (len(index), index.dim, index.index_type) == (2000, 32, index_type)
    np.testing.assert_allclose(index.embeddings, vectors, atol=1e-6)
    assert index.lookup(["item-7", "nope"]).tolist() == [7, -1]
    assert index.popularity[0] == 1999
    queries = vectors[:50]
    _, exact = exact_search(queries, vectors, 10)
    _, found = index.search(queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, exact, strict=True)])
    # product quantisation with 4 sub-quantisers of 8 dims is coarse by design
    assert recall >= {"flat": 0.999, "ivf": 0.8, "hnsw": 0.8, "ivfpq": 0.25}[index_type]
    exclude = [exact[i, :5] for i in range(50)]  # the five best items of every query
    scores, found = index.search(queries, 10, exclude=exclude)
    assert found.shape == (50, 10) and (found >= 0).all()
    for row in range(50):
        assert not set(found[row]) & set(exclude[row].tolist())
        assert len(set(found[row])) == 10
        assert np.all(np.diff(scores[row]) <= 1e-6)  # best first


def test_exclusion_falls_back_to_exact_search_when_the_index_runs_short(tmp_path):
    vectors = clustered_vectors(400, 16)
    out = tmp_path / "ivf"
    spec = IndexSpec(type="ivf", nlist=8, nprobe=1).resolved(400, 16)
    write_index(
        str(out),
        [str(i) for i in range(400)],
        vectors,
        np.zeros(400),
        build_faiss_index(vectors, spec),
        spec,
        "t",
    )
    index = ItemIndex.load(str(out))
    _, probe = index.search(vectors[:1], 400)
    reachable = probe[0][probe[0] >= 0]  # one list: the index cannot return more than these
    scores, found = index.search(vectors[:1], 5, exclude=[reachable])
    _, expected = exact_search(vectors[:1], vectors, 5, [reachable])
    assert found[0].tolist() == expected[0].tolist()
    # asking for more than remains pads with -1 / -inf
    scores, found = index.search(vectors[:1], 5, exclude=[np.arange(397)])
    assert found[0, :3].tolist() == sorted(
        found[0, :3].tolist(), key=lambda i: -float(vectors[0] @ vectors[i])
    )
    assert found[0, 3:].tolist() == [-1, -1] and np.isneginf(scores[0, 3:]).all()


def test_tampered_files_and_wrong_dimensions_are_clear_errors(tmp_path):
    vectors = clustered_vectors(300, 16)
    out = _write(tmp_path, vectors, "flat")
    index = ItemIndex.load(str(out))
    with pytest.raises(ArtifactError, match="16-d embeddings"):
        index.search(np.ones((2, 8), np.float32), 5)
    faiss_file = out / FAISS_FILE
    faiss_file.write_bytes(faiss_file.read_bytes() + b"\0")
    with pytest.raises(ArtifactError, match=r"items\.faiss does not match index\.json"):
        ItemIndex.load(str(out))
    other = _write(tmp_path / "other", clustered_vectors(300, 8), "flat")
    faiss_file.write_bytes((other / FAISS_FILE).read_bytes())
    meta = json.loads((out / META_FILE).read_text())
    meta["files"][FAISS_FILE] = json.loads((other / META_FILE).read_text())["files"][FAISS_FILE]
    (out / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match=r"items\.faiss has dimension 8 but index\.json says 16"):
        ItemIndex.load(str(out))
    with pytest.raises(ArtifactError, match="not an index directory"):
        ItemIndex.load(str(tmp_path / "nothing-here"))
    with pytest.raises(ConfigError, match="index type"):
        IndexSpec(type="annoy")  # type: ignore[arg-type]


def test_ranking_metrics_on_known_ranks():
    ranked = np.array([[5, 1, 2], [7, 8, 9], [3, 4, 6]])
    targets = np.array([1, 0, 3])
    ranks = target_ranks(ranked, targets)
    assert ranks.tolist() == [1, -1, 0]
    assert recall_at_k(ranks, 1) == pytest.approx(1 / 3)
    assert recall_at_k(ranks, 2) == pytest.approx(2 / 3)
    assert ndcg_at_k(ranks, 3) == pytest.approx((1 / np.log2(3) + 1.0) / 3)
    assert mrr(ranks) == pytest.approx((0.5 + 1.0) / 3)
    assert ranking_metrics(ranked, targets, recall_ks=(1, 3), ndcg_k=2)["recall@3"] == pytest.approx(2 / 3)


def test_popularity_search_skips_seen_items():
    counts = np.array([5, 50, 10, 40, 0])
    _, ids = popularity_search(counts, 2, 3, exclude=[np.array([1]), np.array([], dtype=np.int64)])
    assert ids.tolist() == [[3, 2, 0], [1, 3, 2]]


def test_build_index_and_eval_retrieval_through_the_cli(ray_session, tmp_path, capsys):
    data = write_tiny_world(tmp_path / "data")
    model = build_tiny_encoder(item_texts(pq.read_table(data / "items.parquet")), tmp_path / "tiny")
    index_dir = tmp_path / "index"
    build = ["build-index", "--encoder", str(model), "--data", str(data), "--out", str(index_dir)]
    assert (
        main([*build, "--index-type", "hnsw", "--batch-size", "16", "--concurrency", "1", "--embed", "ray"])
        == 0
    )
    meta = json.loads((index_dir / META_FILE).read_text())
    assert (
        meta["index_type"] == "hnsw"
        and meta["dim"] == 32
        and meta["items"] == 60
        and meta["encoder"] == str(model.absolute())
    )
    assert meta["params"]["ef_search"] == 128
    table = pq.read_table(index_dir / "item_embeddings.parquet")
    assert table.schema.field("embedding").type.list_size == 32
    assert sum(table.column("popularity").to_pylist()) == 400  # 40 users × 10 interactions
    assert (index_dir / "config.yaml").exists()

    out_json = tmp_path / "eval" / "metrics.json"
    assert (
        main(
            [
                "eval-retrieval",
                "--index",
                str(index_dir),
                "--data",
                str(data),
                "--k",
                "5",
                "--json",
                str(out_json),
            ]
        )
        == 0
    )
    result = json.loads(out_json.read_text())
    assert {
        "k",
        "users",
        "recall@5",
        "ndcg@5",
        "mrr",
        "recall@10",
        "recall@50",
        "recall@100",
        "baselines",
    } <= set(result)
    assert result["k"] == 5 and result["users"] == 40
    popularity = result["baselines"]["popularity"]
    for metrics in (result, popularity):
        assert (
            0.0
            <= metrics["recall@5"]
            <= metrics["recall@10"]
            <= metrics["recall@50"]
            <= metrics["recall@100"]
            <= 1.0
        )
        assert 0.0 <= metrics["ndcg@5"] <= metrics["recall@5"] and 0.0 <= metrics["mrr"] <= 1.0
    assert result["recall@100"] == 1.0  # 60 items: every unseen item is within the top 100
    printed = capsys.readouterr().out
    assert "popularity" in printed and "item_knn" in printed and "cold recall@5" in printed
    peers = {"popularity", "item_knn"} | ({"als", "bpr"} if implicit_available() else set())
    assert set(result["baselines"]) == peers
    assert result["split"] == {"kind": "temporal", "cold_fraction": 0.0, "seed": 0, "cold_items": 0}
    # every item has train interactions in the tiny world: all targets are warm, and warm is the whole
    assert result["warm"]["users"] == 40 and result["cold"]["users"] == 0
    assert result["warm"]["model"]["recall@5"] == result["recall@5"]
    for (
        name
    ) in peers:  # the warm section holds the ranking metrics (the beyond-accuracy ones are overall only)
        warm_metrics = result["warm"]["baselines"][name]
        assert warm_metrics and all(result["baselines"][name][key] == v for key, v in warm_metrics.items())

    # the cold-item split: a quarter of the held-out items never occur in train
    cold_run = evaluate_retrieval(
        EvalRetrievalConfig(index=str(index_dir), data=str(data), k=5, cold_fraction=0.25, split_seed=1)
    )
    split = cold_run["split"]
    assert split["kind"] == "cold-items" and split["cold_items"] > 0
    warm, cold = cold_run["warm"], cold_run["cold"]
    assert warm["users"] + cold["users"] == cold_run["users"] and cold["users"] > 0
    # the text model ranks cold items (it embeds them from their text); the CF peers cannot score them at all
    assert cold["model"]["recall@100"] == 1.0
    for name in peers - {"popularity"}:
        assert cold["baselines"][name]["recall@100"] == 0.0
    assert "cannot" not in cold["note"] and "never rank" in cold["note"]
    with pytest.raises(ConfigError, match="--cold-fraction"):
        EvalRetrievalConfig(index=str(index_dir), data=str(data), cold_fraction=1.0)


def test_build_index_embeds_in_process_without_ray_and_matches_the_encoder(tmp_path, monkeypatch):
    from rayrec.encoding import TextEncoder
    from rayrec.index.build import BuildIndexConfig, build_index

    data = write_tiny_world(tmp_path / "data")
    texts = item_texts(pq.read_table(data / "items.parquet"))
    model = build_tiny_encoder(texts, tmp_path / "tiny")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    config = BuildIndexConfig(data=str(data), out=str(tmp_path / "index"), encoder=str(model), batch_size=7)
    assert config.embed_mode() == "local"
    assert BuildIndexConfig(data="d", out="o", address="127.0.0.1:6379").embed_mode() == "ray"
    report = build_index(config)
    assert report["embed_mode"] == "local"
    expected = TextEncoder.load(model).encode(texts, batch_size=1)  # one text at a time: no padding at all
    index = ItemIndex.load(str(tmp_path / "index"))
    np.testing.assert_allclose(index.embeddings, expected, atol=1e-5)
    items = pq.read_table(data / "items.parquet")  # the tiny world's items have a category column
    assert index.categories.tolist() == items.column("category").to_pylist()
    assert pq.read_table(tmp_path / "index" / "item_embeddings.parquet").column_names[-1] == "category"
    with pytest.raises(ConfigError, match="--threads must be >= 1"):
        BuildIndexConfig(data="d", out="o", threads=0)


def test_categories_are_optional_in_the_layout_and_covered_by_the_checksum(tmp_path):
    """An index written without categories (the layout before they were stored) loads with None; one with
    them round-trips them (nulls as ``""``), and a changed category fails the embeddings file's sha256."""
    vectors = clustered_vectors(40, 8)
    plain = _write(tmp_path, vectors, "flat")
    assert ItemIndex.load(str(plain)).categories is None
    assert "category" not in pq.read_table(plain / "item_embeddings.parquet").column_names
    spec = IndexSpec(type="flat").resolved(40, 8)
    categories = ["a", "b", None, "c"] * 10
    out = tmp_path / "with-categories"
    ids = [f"item-{i}" for i in range(40)]
    write_index(
        str(out),
        ids,
        vectors,
        np.ones(40),
        build_faiss_index(vectors, spec),
        spec,
        "t",
        categories=categories,
    )
    index = ItemIndex.load(str(out))
    assert index.categories.tolist() == ["a", "b", "", "c"] * 10 and len(index) == 40
    table = pq.read_table(out / "item_embeddings.parquet")
    relabelled = table.set_column(3, "category", pa.array(["x"] * 40))
    pq.write_table(relabelled, out / "item_embeddings.parquet")
    with pytest.raises(ArtifactError, match=r"item_embeddings\.parquet does not match index\.json"):
        ItemIndex.load(str(out))
    with pytest.raises(ArtifactError, match="3 categories for 40 items"):
        write_index(str(tmp_path / "bad"), ids, vectors, np.ones(40), None, spec, "t", categories=["a"] * 3)


def test_an_index_built_from_rated_data_stores_each_items_rating(tmp_path, monkeypatch):
    """``rayrec build-index`` over interactions with rating events stores each item's ``item_rating`` (the
    shrunk mean the simulator's ``observe_rating`` computes from the same log), covered by the checksum; over
    clicks only it stores none. A simulator built from the rated index alone reads the index's ratings."""
    from envs.config import SlateEnvConfig
    from envs.factory import build_simulator
    from rayrec.data.io import write_interactions
    from rayrec.features import logged_rating_totals, rating_feature
    from rayrec.index.build import BuildIndexConfig, build_index

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    data = write_tiny_world(tmp_path / "data")
    model = build_tiny_encoder(item_texts(pq.read_table(data / "items.parquet")), tmp_path / "tiny")
    build_index(BuildIndexConfig(data=str(data), out=str(tmp_path / "clicks"), encoder=str(model)))
    clicks = ItemIndex.load(str(tmp_path / "clicks"))
    assert (
        clicks.rating is None and json.loads((tmp_path / "clicks" / META_FILE).read_text())["rating"] is False
    )

    interactions = pq.read_table(data / "interactions.parquet")
    rng = np.random.default_rng(0)
    rated = rng.random(interactions.num_rows) < 0.5  # half the events become ratings of 1..5 stars
    events = np.where(rated, "rating", "click")
    values = np.where(rated, rng.integers(1, 6, interactions.num_rows), 1.0).astype(np.float32)
    interactions = interactions.set_column(3, "event", pa.array(events)).set_column(
        4, "value", pa.array(values)
    )
    write_interactions(interactions, str(data))
    build_index(BuildIndexConfig(data=str(data), out=str(tmp_path / "rated"), encoder=str(model)))
    index = ItemIndex.load(str(tmp_path / "rated"))
    expected = rating_feature(*logged_rating_totals(index.item_ids, interactions))
    np.testing.assert_array_equal(index.rating, expected)
    assert 0.0 < index.rating.min() < 0.5 < index.rating.max() < 1.0
    sim = build_simulator(
        SlateEnvConfig(
            index_dir=str(tmp_path / "rated"),
            observe_rating=True,
            candidates="random",
            num_candidates=5,
            slate_size=2,
        ),
        batch=2,
    )
    np.testing.assert_array_equal(sim.catalog.rating, expected)
    # the column is covered by the embeddings file's checksum
    table = pq.read_table(tmp_path / "rated" / "item_embeddings.parquet")
    where = table.schema.get_field_index("rating")
    pq.write_table(
        table.set_column(where, "rating", pa.array(np.zeros(len(index), np.float32))),
        tmp_path / "rated" / "item_embeddings.parquet",
    )
    with pytest.raises(ArtifactError, match=r"item_embeddings\.parquet does not match index\.json"):
        ItemIndex.load(str(tmp_path / "rated"))
