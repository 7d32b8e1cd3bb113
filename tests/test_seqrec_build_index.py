"""``rayrec build-index --encoder MODEL_DIR``: a grown catalog indexed with a trained retrieval model.

Real parts only: the pair world of test_seqrec.py with item texts, a real (tiny, local) BERT as text encoder, the
text index built from it by ``build_index`` itself, a tiny model trained here by ``train_retrieval_model`` with
cold items, and the ``rayrec`` command line. The catalog then grows (new items) and loses two of the model's items.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from test_seqrec import ITEMS, small_config, write_pair_world

from rayrec.cli import main as cli_main
from rayrec.data.io import write_interactions, write_items
from rayrec.encoding import TextEncoder, build_tiny_encoder
from rayrec.errors import ArtifactError
from rayrec.index.build import BuildIndexConfig, build_index
from rayrec.index.evaluate import EvalRetrievalConfig, evaluate_retrieval
from rayrec.index.item_index import ItemIndex
from rayrec.seqrec import artifact
from rayrec.seqrec.artifact import load_model
from rayrec.seqrec.catalog import MODEL_FILES, is_model_dir
from serving.pipeline import request_contexts
from serving.user_model import load_user_model
from trainers.seqrec import train_retrieval_model

TOPICS = {
    "space": "rocket orbit planet galaxy",
    "food": "pasta garlic oven sauce",
    "sport": "goal league striker match",
    "music": "guitar album song",
}
IDS = [f"i{j}" for j in range(ITEMS)]
CATEGORIES = [list(TOPICS)[j % len(TOPICS)] for j in range(ITEMS)]
TEXTS = [f"{TOPICS[c]} {item}" for item, c in zip(IDS, CATEGORIES, strict=True)]
DROPPED = ["i38", "i39"]
NEW = {"n0": ("space", "galaxy rocket launch"), "n1": ("music", "song album world tour"), "n2": ("food", "")}
"""New items: id → (category, text); n2's text is filled in by the fixture with a cold model item's text."""


def counts_by_item(events: pa.Table) -> dict[str, int]:
    """Interactions per item id."""
    ids, counts = np.unique(events.column("item_id").to_numpy(zero_copy_only=False), return_counts=True)
    return dict(zip(ids.tolist(), counts.tolist(), strict=True))


def _cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """(exit status, stdout, the error: from ``error:`` to the end of stderr; transformers' progress bars before
    it are not the command's error)."""
    code = cli_main(argv)
    captured = capsys.readouterr()
    err = captured.err.strip()
    return code, captured.out, err[err.find("error:") :] if "error:" in err else err


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """Model trained on data/ (with cold items) over a text index of a real encoder; grown/ is the new catalog."""
    root = tmp_path_factory.mktemp("seqrec-build-index")
    data, _ = write_pair_world(root)
    tags = [[c] for c in CATEGORIES]
    write_items(
        pa.table({"item_id": IDS, "title": IDS, "text": TEXTS, "category": CATEGORIES, "tags": tags}),
        str(data),
    )
    encoder = build_tiny_encoder(TEXTS, root / "encoder", hidden_size=16, intermediate_size=32)
    text_index = root / "text-index"
    build_index(
        BuildIndexConfig(data=str(data), out=str(text_index), encoder=str(encoder), embed="local", threads=1)
    )
    model = root / "model"
    train_retrieval_model(
        small_config(data, text_index, model, epochs=2, hard_negatives=0, cold_fraction=0.25)
    )
    loaded = load_model(str(model))
    cold = [str(i) for i in loaded.item_ids[~loaded.model.items.has_id.numpy()] if str(i) not in DROPPED]
    copied = cold[0]  # n2 has the text of an item the model knows but never saw in training
    new = {item: (c, text or TEXTS[IDS.index(copied)]) for item, (c, text) in NEW.items()}

    grown = root / "grown"
    kept = [j for j, item in enumerate(IDS) if item not in DROPPED]
    write_items(
        pa.table(
            {
                "item_id": [IDS[j] for j in kept] + list(new),
                "title": [IDS[j] for j in kept] + list(new),
                "text": [TEXTS[j] for j in kept] + [text for _, text in new.values()],
                "category": [CATEGORIES[j] for j in kept] + [c for c, _ in new.values()],
                "tags": [tags[j] for j in kept] + [[c] for c, _ in new.values()],
            }
        ),
        str(grown),
    )
    events = pq.read_table(data / "interactions.parquet")
    events = events.filter(pc.invert(pc.is_in(events.column("item_id"), pa.array(DROPPED))))
    extra = pa.table(  # three clicks on n0, one on n1: the new items' popularity
        {
            "user_id": ["u0", "u1", "u2", "u3"],
            "item_id": ["n0", "n0", "n0", "n1"],
            "timestamp": pa.array([1_800_000_000] * 4, pa.int64()),
            "event": ["click"] * 4,
            "value": pa.array(np.ones(4), pa.float32()),
        }
    ).cast(events.schema)
    events = pa.concat_tables([events, extra])
    write_interactions(events, str(grown))
    return {
        "data": data,
        "grown": grown,
        "encoder": encoder,
        "model": model,
        "new": new,
        "copied": copied,
        "events": events,
    }


def test_a_grown_catalog_gets_the_models_vectors_and_the_text_path_for_new_items(world, tmp_path, capsys):
    out = tmp_path / "index"
    argv = ["build-index", "--encoder", str(world["model"]), "--data", str(world["grown"]), "--out", str(out)]
    code, printed, err = _cli([*argv, "--embed", "local", "--threads", "1"], capsys)
    assert code == 0, err
    assert (
        f"{ITEMS - 2} items the model knows (its own vectors), 3 new items embedded by {world['encoder']}"
        in printed
    )
    assert "2 items of the model not in the data dropped" in printed

    index = ItemIndex.load(str(out))
    own = ItemIndex.load(str(world["model"] / "index"))
    loaded = load_model(str(world["model"]))
    catalog = pq.read_table(world["grown"] / "items.parquet")
    assert index.item_ids.tolist() == catalog.column("item_id").to_pylist()
    assert index.encoder == f"{artifact.KIND}:{world['model']}" and index.dim == loaded.model.config.dim
    assert index.categories.tolist() == catalog.column("category").to_pylist()
    counts = counts_by_item(world["events"])
    assert index.popularity.tolist() == [counts.get(item, 0) for item in index.item_ids]

    # Known items: exactly the vectors of the model's own index (warm ones with their ID part, cold ones without).
    known = [str(i) for i in index.item_ids if str(i) in set(own.item_ids.tolist())]
    assert len(known) == ITEMS - 2
    np.testing.assert_array_equal(index.embeddings[index.lookup(known)], own.embeddings[own.lookup(known)])
    has_id = dict(zip(loaded.item_ids.tolist(), loaded.model.items.has_id.tolist(), strict=True))
    assert {has_id[i] for i in known} == {True, False}

    # New items: normalize(W t + b) of the text encoder's embedding t, computed here from the tower's weights.
    new = list(world["new"])
    encoder = TextEncoder.load(str(world["encoder"]))
    t = encoder.encode([text for _, text in world["new"].values()])  # [3, text_dim]
    w = loaded.model.items.text_projection.weight.detach().numpy()  # [dim, text_dim]
    b = loaded.model.items.text_projection.bias.detach().numpy()  # [dim]
    raw = t @ w.T + b
    expected = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    np.testing.assert_allclose(index.embeddings[index.lookup(new)], expected, atol=1e-5)
    # n2 has the text of a cold model item: it lands exactly where that item is (what a cold item gets).
    np.testing.assert_allclose(
        index.embeddings[index.lookup(["n2"])], own.embeddings[own.lookup([world["copied"]])], atol=1e-5
    )
    assert not np.allclose(index.embeddings[index.lookup(["n0"])], index.embeddings[index.lookup(["n1"])])

    # An ordinary index: eval-retrieval reads it as any other; scoring the user tower needs the model's own catalog.
    result = evaluate_retrieval(
        EvalRetrievalConfig(index=str(out), data=str(world["grown"]), k=5, peers=False)
    )
    assert result["index"]["items"] == ITEMS + 1 and result["users"] > 0
    evaluate = ["eval-retrieval", "--index", str(out), "--data", str(world["grown"]), "--no-peers"]
    code, _, err = _cli([*evaluate, "--user-model", str(world["model"]), "--cold-fraction", "0.25"], capsys)
    assert code == 2 and "does not list the items of user model" in err and "\n" not in err

    # The server takes the grown catalog with the user tower: a history of known items gets the profile it gets
    # on the model's own index, and a history with a new item is read through that item's text-path vector.
    served = load_user_model(str(world["model"]))
    served.check_index(index, str(out))
    known = ["i3", "i7", "i12"]
    grown_ctx, own_ctx, new_ctx = (
        request_contexts(idx, "v", [history], [None], [0], [False], served)[0]
        for idx, history in ((index, known), (own, known), (index, [*known, "n0"]))
    )
    np.testing.assert_allclose(grown_ctx.profile, own_ctx.profile, atol=1e-5)
    expected = served.model.queries(index.embeddings, [index.lookup([*known, "n0"])])[0]
    np.testing.assert_allclose(new_ctx.profile, expected, atol=1e-6)
    assert not np.allclose(new_ctx.profile, grown_ctx.profile) and new_ctx.unknown == 0
    moved = ItemIndex.load(str(out))
    moved.embeddings[moved.lookup(["i3"])] *= -1  # one known item's vector is not the model's any more
    with pytest.raises(ArtifactError, match="was not built from user model"):
        served.check_index(moved, "moved")


def test_the_models_own_catalog_needs_no_text_encoder_and_reproduces_its_index(world, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(world["model"], model, ignore=shutil.ignore_patterns("index"))
    record = json.loads((model / "model.json").read_text())
    record["text_encoder"], record["text_index"] = None, str(tmp_path / "gone")
    (model / "model.json").write_text(json.dumps(record))
    same = tmp_path / "same"
    argv = ["build-index", "--encoder", str(model), "--embed", "local", "--data"]
    code, printed, err = _cli([*argv, str(world["data"]), "--out", str(same)], capsys)
    assert code == 0, err
    assert f"{ITEMS} items the model knows (its own vectors), 0 new items; 0 items" in printed
    assert "nothing to embed" in printed
    index, own = ItemIndex.load(str(same)), ItemIndex.load(str(world["model"] / "index"))
    assert index.item_ids.tolist() == own.item_ids.tolist()
    np.testing.assert_array_equal(index.embeddings, own.embeddings)
    # popularity: every interaction of the data, as build-index counts it (the model's index counts its train split)
    assert int(index.popularity.sum()) == pq.read_metadata(world["data"] / "interactions.parquet").num_rows
    # The grown catalog has new items: without a text encoder they cannot be embedded.
    grown = tmp_path / "grown-index"
    code, _, err = _cli([*argv, str(world["grown"]), "--out", str(grown)], capsys)
    assert code == 2 and err.startswith("error: 3 items are not in user model") and "names none" in err
    assert "\n" not in err and not grown.exists()


def _broken_model(world, root: Path, name: str, edit) -> Path:
    model = root / f"model-{name}"
    shutil.copytree(world["model"], model, ignore=shutil.ignore_patterns("index"))
    edit(model)
    return model


def _set_text_encoder(value: str):
    def edit(model: Path) -> None:
        record = json.loads((model / "model.json").read_text())
        record["text_encoder"] = value
        (model / "model.json").write_text(json.dumps(record))

    return edit


def test_a_broken_model_or_an_unusable_text_encoder_fails_in_one_line_and_writes_nothing(
    world, tmp_path, capsys
):
    other = build_tiny_encoder(
        TEXTS, tmp_path / "other-encoder", hidden_size=16, intermediate_size=32, seed=1
    )
    narrow = build_tiny_encoder(
        TEXTS, tmp_path / "narrow-encoder", hidden_size=8, intermediate_size=16, num_heads=2
    )
    cases = {
        "no-weights": (lambda m: (m / "model.safetensors").unlink(), "not a train-retrieval-model output"),
        "no-record": (lambda m: (m / "model.json").unlink(), "not a train-retrieval-model output"),
        "corrupt-weights": (
            lambda m: (m / "model.safetensors").write_bytes(b"\0" * 64),
            "not a safetensors file",
        ),
        "corrupt-record": (lambda m: (m / "model.json").write_text("{"), "model.json is not valid JSON"),
        "encoder-gone": (_set_text_encoder(str(tmp_path / "gone")), "encoder " + str(tmp_path / "gone")),
        "hub-name": (_set_text_encoder("nobody/no-such-encoder"), "nor in the local Hugging Face cache"),
        "other-encoder": (_set_text_encoder(str(other)), "does not reproduce the model's text embeddings"),
        "narrow-encoder": (
            _set_text_encoder(str(narrow)),
            "makes 8-d embeddings but the model was trained on 16-d",
        ),
    }
    for name, (edit, message) in cases.items():
        model = _broken_model(world, tmp_path, name, edit)
        out = tmp_path / f"out-{name}"
        argv = ["build-index", "--encoder", str(model), "--data", str(world["grown"]), "--out", str(out)]
        code, _, err = _cli([*argv, "--embed", "local", "--threads", "1"], capsys)
        assert code == 2 and err.startswith("error: ") and message in err, (name, err)
        assert "\n" not in err and not out.exists(), name
    with pytest.raises(ArtifactError, match="not a train-retrieval-model output"):
        build_index(
            BuildIndexConfig(
                data=str(world["grown"]), out=str(tmp_path / "x"), encoder=str(tmp_path / "model-no-weights")
            )
        )


def test_a_model_directory_is_told_from_a_text_encoder_by_its_files(world, tmp_path):
    assert MODEL_FILES == (artifact.META_FILE, artifact.WEIGHTS_FILE)
    assert is_model_dir(str(world["model"])) and not is_model_dir(str(world["encoder"]))
    assert not is_model_dir(str(world["model"] / "index"))
    assert not is_model_dir("sentence-transformers/all-MiniLM-L6-v2")  # a hub name
    # model.safetensors without an encoder's config.json: a model that lost its model.json
    weights_only = tmp_path / "weights-only"
    weights_only.mkdir()
    shutil.copy(world["model"] / "model.safetensors", weights_only)
    assert is_model_dir(str(weights_only))
