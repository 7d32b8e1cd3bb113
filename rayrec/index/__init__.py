"""Item index: Ray Data embeddings of the catalog, a FAISS index over them, and retrieval evaluation."""

from rayrec.index.build import BuildIndexConfig, build_index
from rayrec.index.faiss_index import INDEX_TYPES, IndexSpec
from rayrec.index.item_index import EMBEDDINGS_FILE, FAISS_FILE, META_FILE, ItemIndex

__all__ = [
    "EMBEDDINGS_FILE",
    "FAISS_FILE",
    "INDEX_TYPES",
    "META_FILE",
    "BuildIndexConfig",
    "IndexSpec",
    "ItemIndex",
    "build_index",
]
