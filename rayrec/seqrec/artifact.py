"""The retrieval model's directory: ``model.safetensors`` (weights, frozen text embeddings, ID mask) and
``model.json`` (architecture, item ids, the split it was trained on), and the item index built from it.

The item vectors go into an ordinary item index (:func:`rayrec.index.item_index.write_index`), so everything that
reads an index (``eval-retrieval``, the simulator's candidates) uses them unchanged; the user tower is needed at
query time and is loaded from this directory (``eval-retrieval --user-model DIR``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from rayrec import storage
from rayrec.errors import ArtifactError, ConfigError, RayrecError
from rayrec.index.faiss_index import IndexSpec, build_faiss_index
from rayrec.index.item_index import META_FILE as INDEX_META_FILE
from rayrec.index.item_index import ItemIndex, write_index
from rayrec.seqrec.model import SeqRecModel, SeqRecModelConfig

WEIGHTS_FILE = "model.safetensors"
META_FILE = "model.json"
KIND = "rayrec-seqrec"
FORMAT_VERSION = 1
VECTOR_TOLERANCE = 1e-4
"""Largest difference between an index's embeddings and the model's item vectors for them to be the same."""


@dataclass
class LoadedModel:
    """A retrieval model with its catalog and the record of how it was trained."""

    model: SeqRecModel
    """The towers, in eval mode."""
    item_ids: np.ndarray
    """[N] str item id of each row of the item tower."""
    meta: dict[str, Any]
    """The content of ``model.json`` (``config``, ``item_ids``, ``split``, ``text_index``, ...)."""

    @property
    def split(self) -> dict[str, Any]:
        """``{"cold_fraction", "split_seed", "holdout"}`` the model was trained on."""
        return dict(self.meta.get("split", {}))

    @property
    def text_encoder(self) -> str | None:
        """The text encoder of the text index the model was trained on: ``model.json``'s ``text_encoder``, else
        (a model written before it was recorded) the ``encoder`` in its ``text_index``'s ``index.json``; None
        when neither can be read. Free-text queries must be embedded by it (``text_dim``-d)."""
        if self.meta.get("text_encoder"):
            return str(self.meta["text_encoder"])
        text_index = self.meta.get("text_index")
        if not text_index:
            return None
        try:
            manifest = json.loads(storage.read_text(storage.join(text_index, INDEX_META_FILE)))
        except (RayrecError, OSError, json.JSONDecodeError):
            return None
        encoder = manifest.get("encoder") if isinstance(manifest, dict) else None
        return str(encoder) if encoder else None

    def _check_dim(self, index: ItemIndex, index_uri: str, model_uri: str) -> None:
        if index.dim != self.model.config.dim:
            raise ArtifactError(
                f"index {index_uri} holds {index.dim}-d embeddings but user model {model_uri} makes "
                f"{self.model.config.dim}-d queries: build the index from the model (its out/index)"
            )

    def check_index(self, index: ItemIndex, index_uri: str, model_uri: str) -> np.ndarray:
        """The model's item vectors [N, dim] after checking that ``index`` holds exactly them, in order."""
        self._check_dim(index, index_uri, model_uri)
        if len(index) != len(self.item_ids) or not np.array_equal(
            index.item_ids.astype(str), self.item_ids.astype(str)
        ):
            raise ArtifactError(
                f"index {index_uri} ({len(index)} items) does not list the items of user model {model_uri} "
                f"({len(self.item_ids)} items) in the same order: build the index from the model"
            )
        vectors = self.model.item_vectors()
        gap = float(np.abs(vectors - index.embeddings).max()) if len(vectors) else 0.0
        if gap > VECTOR_TOLERANCE:
            raise ArtifactError(
                f"index {index_uri} was not built from user model {model_uri} (embeddings differ by {gap:.3g})"
            )
        return vectors

    def check_served_index(self, index: ItemIndex, index_uri: str, model_uri: str) -> None:
        """Refuse an index the model cannot serve. Its dimension must be the model's, and every item of it that
        the model knows must hold the model's vector: the model's own index, or a grown catalog indexed by
        ``build-index --encoder MODEL_DIR`` (whose new items hold their text path, which needs no check here)."""
        self._check_dim(index, index_uri, model_uri)
        rows = {item: row for row, item in enumerate(self.item_ids.astype(str))}
        ids = index.item_ids.astype(str)
        known = np.fromiter((item in rows for item in ids), dtype=bool, count=len(ids))  # [N_index]
        if not known.any():
            raise ArtifactError(
                f"index {index_uri} holds none of the items of user model {model_uri}: build the index from the "
                "model (build-index --encoder MODEL)"
            )
        model_rows = np.array([rows[item] for item in ids[known]])
        gap = float(np.abs(self.model.item_vectors()[model_rows] - index.embeddings[known]).max())
        if gap > VECTOR_TOLERANCE:
            raise ArtifactError(
                f"index {index_uri} was not built from user model {model_uri} (embeddings differ by {gap:.3g})"
            )


def save_model(out_dir: str, model: SeqRecModel, item_ids: np.ndarray | list[str], **meta: Any) -> None:
    """Write ``model.safetensors`` and ``model.json`` under ``out_dir``; ``meta`` goes into the JSON."""
    from safetensors.torch import save

    if len(item_ids) != model.items.num_items:
        raise ArtifactError(f"{len(item_ids)} item ids for a model of {model.items.num_items} items")
    tensors = {name: t.detach().contiguous() for name, t in model.state_dict().items()}
    record = {
        "kind": KIND,
        "format_version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        **meta,
        "item_ids": [str(i) for i in item_ids],
    }
    storage.makedirs(out_dir)
    storage.write_bytes(storage.join(out_dir, WEIGHTS_FILE), save(tensors))
    storage.write_text(storage.join(out_dir, META_FILE), json.dumps(record, indent=1) + "\n")


def load_model(uri: str) -> LoadedModel:
    """Load a model directory written by :func:`save_model`; a missing or inconsistent file is an ArtifactError."""
    from safetensors.torch import load

    try:
        meta = json.loads(storage.read_text(storage.join(uri, META_FILE)))
        blob = storage.read_bytes(storage.join(uri, WEIGHTS_FILE))
    except RayrecError as exc:
        raise ArtifactError(f"user model {uri}: {exc} (not a train-retrieval-model output?)") from None
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"user model {uri}: {META_FILE} is not valid JSON ({exc})") from None
    if meta.get("kind") != KIND or "config" not in meta or "item_ids" not in meta:
        raise ArtifactError(f"user model {uri}: {META_FILE} is not a {KIND} model record")
    known = {f.name for f in fields(SeqRecModelConfig)}
    try:
        config = SeqRecModelConfig(**{k: v for k, v in meta["config"].items() if k in known})
    except (TypeError, ConfigError) as exc:
        raise ArtifactError(f"user model {uri}: bad config in {META_FILE} ({exc})") from None
    try:
        tensors = load(blob)
    except Exception as exc:  # safetensors raises its own error types for a corrupt file
        raise ArtifactError(f"user model {uri}: {WEIGHTS_FILE} is not a safetensors file ({exc})") from None
    text = tensors.get("items.text_embeddings")
    has_id = tensors.get("items.has_id")
    if text is None or has_id is None:
        raise ArtifactError(f"user model {uri}: {WEIGHTS_FILE} lacks the item tower's text embeddings")
    item_ids = np.asarray(meta["item_ids"], dtype=object)
    if text.shape[0] != len(item_ids):
        raise ArtifactError(
            f"user model {uri}: {WEIGHTS_FILE} holds {text.shape[0]} items but {META_FILE} lists {len(item_ids)}"
        )
    try:
        model = SeqRecModel(text, has_id, config)
    except ConfigError as exc:
        raise ArtifactError(f"user model {uri}: {exc}") from None
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ArtifactError(
            f"user model {uri}: weights do not match {META_FILE}'s config ({first})"
        ) from None
    model.eval()
    return LoadedModel(model=model, item_ids=item_ids, meta=meta)


def write_model_index(
    loaded: LoadedModel,
    model_uri: str,
    out_dir: str,
    popularity: np.ndarray,
    categories: np.ndarray | None = None,
    spec: IndexSpec = IndexSpec(),
) -> dict[str, Any]:
    """Write the model's item vectors as an item index under ``out_dir``; returns its ``index.json``."""
    vectors = loaded.model.item_vectors()  # [N, dim]
    resolved = spec.resolved(len(vectors), vectors.shape[1])
    return write_index(
        out_dir,
        loaded.item_ids,
        vectors,
        popularity,
        build_faiss_index(vectors, resolved),
        resolved,
        encoder=f"{KIND}:{model_uri}",
        categories=categories,
    )
