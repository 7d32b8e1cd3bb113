"""A served retrieval model (``AppConfig.user_model``): request profiles and text queries in the model's space.

With the directory of a ``rayrec train-retrieval-model`` output, every item of the application's index that the
model knows must hold the model's vector (:meth:`rayrec.seqrec.artifact.LoadedModel.check_served_index`): the
model's own index, or a grown catalog indexed by ``build-index --encoder MODEL_DIR``, whose new items hold their
text path. A request's profile is then the user tower's query over the last
``history`` known items of the request's history, in the order the client sent them
(:meth:`rayrec.seqrec.model.SeqRecModel.queries`, the function eval-retrieval scores users with), and a
free-text query, embedded by the text encoder of the text index the model was trained on, goes through the
item tower's text path (:meth:`rayrec.seqrec.model.SeqRecModel.text_queries`: ``normalize(W t + b)``, what a
cold item gets), so it lands in the same space as the item vectors.

Loaded lazily (torch) and cached per process, so colocated stages share one copy.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np


class UserModel:
    """A loaded retrieval model as the serving stages use it.

    Args:
        uri: the model directory (``model.safetensors`` + ``model.json``).
        loaded: its :class:`rayrec.seqrec.artifact.LoadedModel`.
    """

    def __init__(self, uri: str, loaded) -> None:
        self.uri = uri
        self.loaded = loaded
        self.model = loaded.model

    @property
    def dim(self) -> int:
        """Dimension of the item vectors and queries (the index's)."""
        return self.model.config.dim

    @property
    def text_dim(self) -> int:
        """Dimension of the text encoder's embeddings (what the query encoder must output)."""
        return self.model.config.text_dim

    @property
    def text_encoder(self) -> str | None:
        """The model's text encoder (:attr:`rayrec.seqrec.artifact.LoadedModel.text_encoder`), or None."""
        return self.loaded.text_encoder

    def check_index(self, index, index_uri: str) -> None:
        """Raise :class:`rayrec.errors.ArtifactError` unless ``index`` is one the model can serve (its own, or a
        grown catalog indexed with it)."""
        self.loaded.check_served_index(index, index_uri, self.uri)

    def profiles(self, item_vectors: np.ndarray, histories: list[np.ndarray]) -> np.ndarray:
        """[B, dim] float32 user-tower queries of ``histories`` (B arrays of item rows in the order sent, the
        tower reads the last ``history``) over ``item_vectors`` [N, dim]; an empty history's row is zeros
        (a cold start, as without a model). One forward pass for the batch."""
        out = np.zeros((len(histories), self.dim), dtype=np.float32)
        known = [i for i, rows in enumerate(histories) if len(rows)]
        if known:
            out[known] = self.model.queries(item_vectors, [histories[i] for i in known])
        return out

    def text_queries(self, text: np.ndarray) -> np.ndarray:
        """[B, dim] float32: ``text`` [B, text_dim] (embedded free text) through the item tower's text path."""
        return self.model.text_queries(np.asarray(text, dtype=np.float32))

    def info(self) -> dict[str, Any]:
        """What ``/healthz`` reports: the model's path, user tower, history length, dimensions, text encoder."""
        config = self.model.config
        return {
            "path": self.uri,
            "user_tower": config.user_tower,
            "history": config.history,
            "dim": config.dim,
            "text_dim": config.text_dim,
            "text_encoder": self.text_encoder,
        }


@functools.lru_cache(maxsize=4)
def load_user_model(uri: str) -> UserModel:
    """The model directory ``uri`` loaded (once per process); a bad directory is an ArtifactError."""
    from rayrec.seqrec.artifact import load_model  # heavy (torch): only where a user model is served

    return UserModel(uri, load_model(uri))
