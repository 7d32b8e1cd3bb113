"""A catalog indexed by a trained retrieval model: ``rayrec build-index --encoder MODEL_DIR --data D``.

The model's own index (``MODEL_DIR/index``) holds the items it was trained on. A catalog that has grown since is
indexed here with the same item tower: an item the model knows gets exactly its vector in the model's index
(``normalize(W t + b + m · e)``, the ID part only when it had train interactions); an item the model does not know
is embedded from its text by the model's text encoder (the encoder of the text index it was trained on) and
mapped through the tower's text path ``normalize(W t + b)`` — what a cold item gets (ID dropout trains the text
path to stand on its own; DropoutNet, Volkovs et al., NeurIPS 2017). Items of the model missing from the catalog
are dropped. The result is an ordinary item index whose ``encoder`` names the model, as
:func:`rayrec.seqrec.artifact.write_model_index` writes it.

This module loads torch only when a model is actually indexed: :func:`is_model_dir` is what
:func:`rayrec.index.build.build_index` asks for every encoder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rayrec import storage
from rayrec.encoding import encoder_reference, resolve_model
from rayrec.errors import ArtifactError, RayrecError

MODEL_FILES = ("model.json", "model.safetensors")
"""The files of a model directory (``artifact.META_FILE``, ``artifact.WEIGHTS_FILE``; named here so that
detecting one does not import torch)."""
ENCODER_CONFIG_FILE = "config.json"
"""What a text encoder's model directory has and a retrieval model's has not."""
CHECK_ITEMS = 16
"""Known items re-embedded with the new ones to check that the text encoder is the one the model was trained on."""
MIN_TEXT_AGREEMENT = 0.98
"""Least median cosine between those re-embedded texts and the model's stored text embeddings."""

TextEmbedder = Callable[[list[str], str], np.ndarray]
"""``(texts, encoder) -> [len(texts), text_dim]`` unit embeddings: build-index's own embedding path."""


def is_model_dir(uri: str) -> bool:
    """True when ``uri`` is a ``train-retrieval-model`` output: it holds ``model.json``, or ``model.safetensors``
    without the ``config.json`` of a text encoder's directory (so that a model missing its ``model.json`` gets
    the model's error, not the text encoder's)."""
    try:
        if storage.exists(storage.join(uri, MODEL_FILES[0])):
            return True
        return storage.exists(storage.join(uri, MODEL_FILES[1])) and not storage.exists(
            storage.join(uri, ENCODER_CONFIG_FILE)
        )
    except (RayrecError, OSError):  # an unreachable URI is not a model directory; resolve_model says why
        return False


@dataclass(frozen=True)
class CatalogVectors:
    """The item vectors of a catalog from a retrieval model, and how each was made."""

    vectors: np.ndarray
    """[N, dim] float32 unit vectors, one per catalog item, in the catalog's order."""
    encoder: str
    """The index's ``encoder`` field: ``rayrec-seqrec:<model directory>``."""
    known: int
    """Catalog items the model knows: their vectors are the model's own (as in its index)."""
    new: int
    """Catalog items the model does not know: their text embedding through the item tower's text path."""
    dropped: int
    """Items of the model that are not in the catalog (left out of the index)."""
    text_encoder: str | None
    """The text encoder that embedded the new items, as the model records it (None when there were none)."""
    text_agreement: float | None
    """Median cosine between re-embedded known items' texts and the model's text embeddings of them (None when
    nothing was embedded or the catalog shares no item with the model)."""

    def summary(self) -> str:
        line = f"{self.known} items the model knows (its own vectors), {self.new} new items"
        if self.new:
            line += f" embedded by {self.text_encoder} through the item tower's text path"
            if self.text_agreement is not None:
                line += f" (encoder check: median cosine {self.text_agreement:.4f} to the model's text embeddings)"
        return line + f"; {self.dropped} items of the model not in the data dropped"


def model_item_vectors(
    model_uri: str, item_ids: list[str], texts: list[str], embed: TextEmbedder
) -> CatalogVectors:
    """The vectors of the catalog ``item_ids`` [N] (item texts ``texts`` [N]) from the model at ``model_uri``.

    ``embed`` is called once, only when some item is new, with the new items' texts (plus up to
    :data:`CHECK_ITEMS` known items' texts, to check the encoder) and the model's text encoder.

    Raises:
        ArtifactError: the model directory is missing a file or corrupt; its text encoder is not recorded,
            cannot be resolved offline, makes embeddings of another dimension than the model's, or does not
            reproduce the model's text embeddings of the known items.
    """
    from rayrec.seqrec.artifact import KIND, load_model  # heavy (torch): only when a model is indexed

    loaded = load_model(model_uri)
    model = loaded.model
    position = {str(item): row for row, item in enumerate(loaded.item_ids.tolist())}
    rows = np.array([position.get(str(item), -1) for item in item_ids], dtype=np.int64)  # [N]
    known = np.flatnonzero(rows >= 0)
    new = np.flatnonzero(rows < 0)
    vectors = np.zeros((len(item_ids), model.config.dim), dtype=np.float32)
    vectors[known] = model.item_vectors()[rows[known]]
    text_encoder = agreement = None
    if len(new):
        text_encoder = loaded.text_encoder
        source = resolve_text_encoder(text_encoder, model_uri, len(new))
        check = known[np.linspace(0, len(known) - 1, min(CHECK_ITEMS, len(known))).astype(np.int64)]
        text = np.asarray(embed([texts[i] for i in (*new, *check)], source), dtype=np.float32)
        if text.ndim != 2 or text.shape[1] != model.config.text_dim:
            raise ArtifactError(
                f"user model {model_uri}: its text encoder {text_encoder} makes {text.shape[-1]}-d embeddings but "
                f"the model was trained on {model.config.text_dim}-d ones"
            )
        if len(check):
            stored = model.items.text_embeddings[rows[check]].numpy()  # [C, text_dim]
            agreement = float(np.median(_cosine(text[len(new) :], stored)))
            if agreement < MIN_TEXT_AGREEMENT:
                raise ArtifactError(
                    f"user model {model_uri}: its text encoder {text_encoder} does not reproduce the model's text "
                    f"embeddings of {len(check)} known items (median cosine {agreement:.3f} < "
                    f"{MIN_TEXT_AGREEMENT}): not the encoder of its text index {loaded.meta.get('text_index')}, "
                    f"or the items' texts changed since that index was built"
                )
        vectors[new] = model.text_queries(text[: len(new)])
    return CatalogVectors(
        vectors=vectors,
        encoder=f"{KIND}:{encoder_reference(model_uri)}",
        known=len(known),
        new=len(new),
        dropped=len(loaded.item_ids) - len(known),
        text_encoder=text_encoder,
        text_agreement=agreement,
    )


def resolve_text_encoder(name: str | None, model_uri: str, new_items: int) -> str:
    """The model's text encoder ``name`` resolved offline (:func:`rayrec.encoding.resolve_model`): a local
    model directory, the packaged default, a storage URI, or a hub name already in the local Hugging Face cache
    (nothing is downloaded).

    Raises:
        ArtifactError: no encoder recorded, or it cannot be resolved offline.
    """
    why = f"{new_items} items are not in user model {model_uri} and need its text encoder"
    if not name:
        raise ArtifactError(
            f"{why}, but its model.json names none and its text index cannot be read: retrain it, or index "
            f"only the model's items"
        )
    try:
        source = resolve_model(name)
    except ArtifactError as exc:
        raise ArtifactError(f"{why}: {exc}") from None
    if storage.is_remote(source) or Path(source).expanduser().is_dir() or _in_hub_cache(source):
        return source
    raise ArtifactError(
        f"{why}: {name!r} is neither a model directory nor in the local Hugging Face cache (nothing is downloaded)"
    )


def _in_hub_cache(name: str) -> bool:
    """True when the hub model ``name`` has a ``config.json`` in the local Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(name, ENCODER_CONFIG_FILE), str)
    except ValueError:  # not a valid repo id
        return False


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[R] cosine of the rows of ``a`` and ``b`` [R, d]."""
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(axis=1) / np.maximum(norms, 1e-12)
