"""The slate scorer network and its exported, RLlib-free form that the server and the A/B runner load.

:class:`SlateScorer` scores every candidate of an observation (see :mod:`rayrec.features`) with one shared
network, so it is permutation-equivariant over candidates and works for any K: a per-candidate MLP over
``[profile, candidate, profile * candidate, features, budget]``, then self-attention across the
candidates (no positional encoding: retrieval order is already the ``retrieval_rank`` feature), then a
linear score head. The value head has its own per-candidate MLP (mean- and max-pooled over candidates),
so that the critic's regression on returns of any scale does not pull on the policy's features. Training
(``trainers.policy``) wraps it in an RLlib module; serving loads it through :func:`load_exported_policy`.

The export is two files in one directory: ``policy.safetensors`` (the weights) and ``policy.json``
(format version, the scorer config, the slate shape and feature names it was trained with, the sha256
of the weights, and free-form training metadata).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from rayrec import plackett_luce, slate_q, storage
from rayrec.click_logit import SlateClickModel
from rayrec.errors import ArtifactError, ConfigError
from rayrec.features import (
    FEATURE_NAMES,
    HIDDEN_FEATURE_NAMES,
    NUM_FEATURES,
    OBSERVE_SETTINGS,
    is_simulation_feature_set,
)
from rayrec.slate_policy import Observation, Slate

EXPORT_FORMAT = "rayrec-slate-policy"
EXPORT_VERSION = 1
WEIGHTS_FILE = "policy.safetensors"
META_FILE = "policy.json"
OBS_KEYS = ("profile", "candidates", "features", "budget")


@dataclass(frozen=True)
class ScorerConfig:
    """Shape of a :class:`SlateScorer`."""

    dim: int
    """d: embedding dimension of profiles and candidates (the index's dimension)."""
    num_features: int = NUM_FEATURES
    """F: per-candidate features (see ``rayrec.features.FEATURE_NAMES``)."""
    hidden: int = 64
    """Width of the per-candidate MLP, the attention block and the value head."""
    attention_layers: int = 1
    """Self-attention blocks across candidates (0: candidates are scored independently)."""
    attention_heads: int = 4
    """Heads per attention block; must divide ``hidden``."""

    def __post_init__(self) -> None:
        problems = [
            f"{name} must be >= 1 (got {getattr(self, name)})"
            for name in ("dim", "num_features", "hidden", "attention_heads")
            if int(getattr(self, name)) < 1
        ]
        if self.attention_layers < 0:
            problems.append(f"attention_layers must be >= 0 (got {self.attention_layers})")
        if self.attention_heads >= 1 and self.hidden % self.attention_heads:
            problems.append(f"attention_heads {self.attention_heads} must divide hidden {self.hidden}")
        if problems:
            raise ConfigError("ScorerConfig: " + "; ".join(problems))


class SlateScorer(nn.Module):
    """Candidate scores (PL logits) and a state value from a batched observation.

    Shapes: ``profile`` [B, d], ``candidates`` [B, K, d], ``features`` [B, K, F], ``budget`` [B, 1].
    """

    def __init__(self, config: ScorerConfig) -> None:
        super().__init__()
        self.config = config
        d, h = config.dim, config.hidden
        self.candidate_mlp = nn.Sequential(
            nn.Linear(3 * d + config.num_features + 1, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU()
        )
        self.attention = nn.ModuleList(
            nn.TransformerEncoderLayer(
                h,
                config.attention_heads,
                dim_feedforward=2 * h,
                dropout=0.0,
                batch_first=True,
                norm_first=True,
            )
            for _ in range(config.attention_layers)
        )
        self.score_head = nn.Linear(h, 1)
        # Near-zero initial scores: training starts from an almost uniform PL policy, i.e. explores.
        nn.init.normal_(self.score_head.weight, std=0.01)
        nn.init.zeros_(self.score_head.bias)
        self.value_mlp = nn.Sequential(
            nn.Linear(3 * d + config.num_features + 1, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU()
        )
        self.value_head = nn.Sequential(nn.Linear(2 * h + 1, h), nn.ReLU(), nn.Linear(h, 1))

    @staticmethod
    def candidate_inputs(obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Each candidate's input row ``[profile, candidate, profile * candidate, features, budget]``."""
        cand = obs["candidates"]  # [B, K, d]
        num_candidates = cand.shape[1]
        profile = obs["profile"].unsqueeze(1).expand(-1, num_candidates, -1)  # [B, K, d]
        budget = obs["budget"].unsqueeze(1).expand(-1, num_candidates, -1)  # [B, K, 1]
        return torch.cat([profile, cand, profile * cand, obs["features"], budget], dim=-1)  # [B, K, 3d+F+1]

    def scores(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """[B, K] candidate scores (the Plackett–Luce logits)."""
        h = self.candidate_mlp(self.candidate_inputs(obs))  # [B, K, H]
        for block in self.attention:
            h = block(h)  # [B, K, H]
        return self.score_head(h).squeeze(-1)  # [B, K]

    def value(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """[B] state value: expected discounted return of the session from here."""
        h = self.value_mlp(self.candidate_inputs(obs))  # [B, K, H]
        pooled = torch.cat([h.mean(dim=1), h.amax(dim=1), obs["budget"]], dim=-1)  # [B, 2H+1]
        return self.value_head(pooled).squeeze(-1)  # [B]

    def forward(self, obs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores [B, K], value [B])."""
        return self.scores(obs), self.value(obs)


@dataclass(frozen=True)
class ExportConfig:
    """What an exported policy records besides its weights; checked again when it is loaded."""

    scorer: ScorerConfig
    """Network shape."""
    slate_size: int
    """k the policy was trained for (the default slate size; any k <= K can be asked for)."""
    num_candidates: int
    """K the policy was trained with: the server retrieves this many candidates for it (the ``retrieval_rank``
    feature is scaled by K - 1, so another K would show the policy features it never saw)."""
    budget: float = 20.0
    """The simulator's session budget at training: the scale of the ``budget`` feature
    (:func:`rayrec.features.budget_feature`), which the server computes from the request's ``session_step``."""
    name: str = "trained"
    """Name in logs, reports and the event log's ``policy`` column."""
    feature_names: tuple[str, ...] = FEATURE_NAMES
    """Per-candidate feature names, in order; at load time ``rayrec.features.FEATURE_NAMES``, or those and
    the simulator's appended ones (:func:`rayrec.features.feature_names`: ``observe_rating``, ``observe_hidden``)."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Free-form provenance (training config, iterations, seed, final metrics)."""
    choice_model: SlateClickModel | None = None
    """SlateQ policies (``trainers.slateq``): the conditional-logit click model that combines the scorer's
    item values (:meth:`SlateScorer.scores`) and no-click value (:meth:`SlateScorer.value`) into slate values;
    the deterministic slate is then :func:`rayrec.slate_q.greedy_slate`. None: the top-k scores (PPO and
    the other scorers)."""

    def __post_init__(self) -> None:
        if self.choice_model is not None and len(self.choice_model.embedding_weights) not in (
            0,
            self.scorer.dim,
        ):
            raise ConfigError(
                f"ExportConfig: choice model has {len(self.choice_model.embedding_weights)} embedding weights "
                f"for {self.scorer.dim}-d embeddings"
            )
        if not 1 <= self.slate_size <= self.num_candidates:
            raise ConfigError(
                f"ExportConfig: slate_size {self.slate_size} must be in 1..num_candidates ({self.num_candidates})"
            )
        if len(self.feature_names) != self.scorer.num_features:
            raise ConfigError(
                f"ExportConfig: {len(self.feature_names)} feature names for a scorer with "
                f"{self.scorer.num_features} features"
            )


def _obs_to_torch(obs: Observation) -> dict[str, torch.Tensor]:
    return {key: torch.as_tensor(np.asarray(obs[key], dtype=np.float32)) for key in OBS_KEYS}


class ExportedPolicy:
    """A trained slate policy behind :class:`rayrec.slate_policy.SlatePolicy`, without RLlib.

    Deterministic mode (the default, for serving and evaluation) shows the top-k scores with propensity
    1. Sampled mode draws a Plackett–Luce slate and logs each shown item's position marginal as its
    propensity (see :func:`rayrec.plackett_luce.position_marginals`) so that off-policy estimators can
    reweight the log.
    """

    def __init__(
        self, scorer: SlateScorer, config: ExportConfig, *, sampled: bool = False, marginal_samples: int = 256
    ) -> None:
        self.scorer = scorer.eval()
        self.config = config
        self.sampled = sampled
        self.marginal_samples = marginal_samples
        self.name = f"{config.name}-sampled" if sampled else config.name
        if sampled and config.choice_model is not None:
            raise ConfigError(
                f"policy {config.name!r} is a SlateQ policy (greedy slates of item values): it has no sampled mode"
            )

    @property
    def feature_names(self) -> tuple[str, ...]:
        """The per-candidate features the policy reads, in order (its export's)."""
        return self.config.feature_names

    def check_observation(self, obs: Observation, slate_size: int) -> None:
        """Clear errors for an observation the policy cannot score (wrong keys, dimension or slate size)."""
        missing = [key for key in OBS_KEYS if key not in obs]
        if missing:
            raise ConfigError(f"policy {self.name!r}: observation lacks {missing} (needs {list(OBS_KEYS)})")
        cand, feats = np.shape(obs["candidates"]), np.shape(obs["features"])
        dim = self.config.scorer.dim
        if len(cand) != 3 or cand[-1] != dim:
            raise ArtifactError(
                f"policy {self.name!r} was trained on {dim}-d embeddings but the candidates are {cand} "
                f"([B, K, d]): the index does not match the one the policy was trained with"
            )
        if feats != (*cand[:2], self.config.scorer.num_features):
            appended = list(self.config.feature_names[NUM_FEATURES:])
            hidden = [name for name in appended if name in HIDDEN_FEATURE_NAMES]
            flags = [f"{OBSERVE_SETTINGS[name]}=true" for name in appended if name in OBSERVE_SETTINGS]
            flags += [f"observe_hidden={hidden}"] * bool(hidden)
            hint = (
                f": it was trained with the appended features {appended} (run it in a simulator with "
                f"{' and '.join(flags)})"
                if appended
                else ""
            )
            raise ArtifactError(
                f"policy {self.name!r}: features {feats} do not match candidates {cand} and "
                f"{self.config.scorer.num_features} features {list(self.config.feature_names)}{hint}"
            )
        if not 1 <= slate_size <= cand[1]:
            raise ConfigError(f"slate size {slate_size} must be in 1..{cand[1]} (the candidate count)")

    def scores(self, obs: Observation) -> np.ndarray:
        """[B, K] float32 candidate scores (the PL logits)."""
        with torch.no_grad():
            return self.scorer.scores(_obs_to_torch(obs)).numpy()

    def select(self, obs: Observation, slate_size: int, rng: np.random.Generator | None = None) -> Slate:
        self.check_observation(obs, slate_size)
        logits = torch.from_numpy(self.scores(obs))  # [B, K]
        if self.config.choice_model is not None:
            slate_indices = self._slateq_slate(obs, logits, slate_size)  # [B, k]
            return Slate(
                indices=slate_indices.numpy().astype(np.int64),
                scores=logits.gather(1, slate_indices).numpy(),
                propensities=np.ones(slate_indices.shape, dtype=np.float32),
            )
        if not self.sampled:
            top = plackett_luce.top_k(logits, slate_size)  # [B, k]
            return Slate(
                indices=top.numpy().astype(np.int64),
                scores=logits.gather(1, top).numpy(),
                propensities=np.ones(top.shape, dtype=np.float32),
            )
        generator = self._generator(rng)
        slate = plackett_luce.gumbel_top_k(logits, slate_size, generator)  # [B, k]
        marginals = plackett_luce.position_marginals(logits, slate_size, self.marginal_samples, generator)
        propensities = marginals.gather(2, slate.unsqueeze(-1)).squeeze(-1)  # [B, k]
        return Slate(
            indices=slate.numpy().astype(np.int64),
            scores=logits.gather(1, slate).numpy(),
            propensities=propensities.numpy().astype(np.float32),
        )

    def position_marginals(self, obs: Observation, slate_size: int) -> np.ndarray:
        self.check_observation(obs, slate_size)
        logits = torch.from_numpy(self.scores(obs))  # [B, K]
        if self.config.choice_model is not None:
            slate_indices = self._slateq_slate(obs, logits, slate_size)  # [B, k]
            return torch.nn.functional.one_hot(slate_indices, logits.shape[1]).numpy().astype(np.float32)
        if not self.sampled:
            top = plackett_luce.top_k(logits, slate_size)  # [B, k]
            return torch.nn.functional.one_hot(top, logits.shape[1]).numpy().astype(np.float32)  # [B, k, K]
        generator = torch.Generator().manual_seed(0)  # same observation → same marginals
        return plackett_luce.position_marginals(logits, slate_size, self.marginal_samples, generator).numpy()

    def _slateq_slate(self, obs: Observation, item_q: torch.Tensor, slate_size: int) -> torch.Tensor:
        """[B, k] SlateQ's greedy slate from the item values ``item_q`` [B, K] and the choice model."""
        model = self.config.choice_model
        with torch.no_grad():
            null_q = self.scorer.value(_obs_to_torch(obs))  # [B]
        item_logits = torch.from_numpy(np.asarray(model.candidate_logits(obs), dtype=np.float32))  # [B, K]
        return slate_q.greedy_slate(
            item_q, null_q, item_logits, position_logits(model, slate_size), slate_size
        )

    @staticmethod
    def _generator(rng: np.random.Generator | None) -> torch.Generator:
        seed = int((rng or np.random.default_rng()).integers(2**63 - 1))
        return torch.Generator().manual_seed(seed)


def position_logits(model: SlateClickModel, slate_size: int) -> torch.Tensor:
    """[slate_size] float32 position logits of ``model``; positions past the fitted ones repeat the last."""
    fitted = np.asarray(model.position_logits, dtype=np.float32)
    if len(fitted) == 0:
        fitted = np.zeros(1, dtype=np.float32)
    padded = np.concatenate([fitted, np.full(max(0, slate_size - len(fitted)), fitted[-1], dtype=np.float32)])
    return torch.from_numpy(padded[:slate_size])


def choice_model_to_json(model: SlateClickModel) -> dict[str, Any]:
    return {
        "feature_weights": [float(x) for x in model.feature_weights],
        "embedding_weights": [float(x) for x in model.embedding_weights],
        "bias": float(model.bias),
        "position_logits": [float(x) for x in model.position_logits],
    }


def choice_model_from_json(data: dict[str, Any]) -> SlateClickModel:
    return SlateClickModel(
        feature_weights=np.asarray(data["feature_weights"], dtype=np.float64),
        embedding_weights=np.asarray(data["embedding_weights"], dtype=np.float64),
        bias=float(data["bias"]),
        position_logits=np.asarray(data["position_logits"], dtype=np.float64),
    )


def _config_to_json(config: ExportConfig) -> dict[str, Any]:
    choice = (
        {} if config.choice_model is None else {"choice_model": choice_model_to_json(config.choice_model)}
    )
    return choice | {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "name": config.name,
        "scorer": dataclasses.asdict(config.scorer),
        "slate_size": config.slate_size,
        "num_candidates": config.num_candidates,
        "budget": config.budget,
        "feature_names": list(config.feature_names),
        "metadata": config.metadata,
    }


def save_exported_policy(module: SlateScorer, config: ExportConfig, out_dir: str) -> str:
    """Write ``module``'s weights and ``config`` under ``out_dir`` (path or URI); returns ``out_dir``."""
    from safetensors.torch import save

    if module.config != config.scorer:
        raise ConfigError(
            f"save_exported_policy: module config {module.config} != export config {config.scorer}"
        )
    weights = save({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()})
    meta = _config_to_json(config) | {"weights_sha256": hashlib.sha256(weights).hexdigest()}
    storage.write_bytes(storage.join(out_dir, WEIGHTS_FILE), weights)
    storage.write_text(storage.join(out_dir, META_FILE), json.dumps(meta, indent=2, default=str) + "\n")
    return str(out_dir)


def load_exported_policy(
    uri: str, *, sampled: bool = False, expected: ExportConfig | None = None, marginal_samples: int = 256
) -> ExportedPolicy:
    """Load an exported policy directory, verifying format, checksum and shapes.

    Args:
        uri: directory (path or URI) written by :func:`save_exported_policy`.
        sampled: load in sampled (Plackett–Luce) mode instead of deterministic top-k.
        expected: when given, the scorer shape and feature names must match it (a policy trained for
            another index or network is refused).
        marginal_samples: prefixes per row for sampled-mode propensities.

    Raises:
        ArtifactError: missing or corrupt files, another format, or a mismatch with ``expected`` /
            the current feature contract.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    meta_uri, weights_uri = storage.join(uri, META_FILE), storage.join(uri, WEIGHTS_FILE)
    for part in (meta_uri, weights_uri):
        if not storage.exists(part):
            raise ArtifactError(f"{uri}: not an exported rayrec policy ({part} is missing)")
    try:
        meta = json.loads(storage.read_text(meta_uri))
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{meta_uri}: not valid JSON ({exc})") from None
    if meta.get("format") != EXPORT_FORMAT or meta.get("version") != EXPORT_VERSION:
        raise ArtifactError(
            f"{meta_uri}: format {meta.get('format')!r} v{meta.get('version')!r}, "
            f"expected {EXPORT_FORMAT!r} v{EXPORT_VERSION}"
        )
    weights = storage.read_bytes(weights_uri)
    if hashlib.sha256(weights).hexdigest() != meta.get("weights_sha256"):
        raise ArtifactError(f"{weights_uri}: sha256 does not match {META_FILE} (corrupt or replaced weights)")
    try:
        config = ExportConfig(
            scorer=ScorerConfig(**meta["scorer"]),
            slate_size=int(meta["slate_size"]),
            num_candidates=int(meta["num_candidates"]),
            budget=float(meta.get("budget", 20.0)),  # exports before this field: the default budget
            name=str(meta.get("name", "trained")),
            feature_names=tuple(meta["feature_names"]),
            metadata=dict(meta.get("metadata") or {}),
            choice_model=choice_model_from_json(meta["choice_model"]) if meta.get("choice_model") else None,
        )
    except (KeyError, TypeError, ValueError, ConfigError) as exc:
        raise ArtifactError(f"{meta_uri}: invalid policy config ({exc})") from None
    if not is_simulation_feature_set(config.feature_names):
        raise ArtifactError(
            f"{uri}: trained on features {list(config.feature_names)}, this rayrec provides {list(FEATURE_NAMES)}"
        )
    if expected is not None:
        check_compatible(config, expected, source=str(uri))
    scorer = SlateScorer(config.scorer)
    try:
        state = load(weights)
        scorer.load_state_dict(state)
    except (SafetensorError, RuntimeError) as exc:
        raise ArtifactError(f"{weights_uri}: weights do not fit {config.scorer}: {exc}") from None
    return ExportedPolicy(scorer, config, sampled=sampled, marginal_samples=marginal_samples)


def check_compatible(found: ExportConfig, expected: ExportConfig, *, source: str) -> None:
    """ArtifactError naming every difference between a stored policy's shape and the one expected."""
    diffs = [
        f"{name}: stored {getattr(found.scorer, name)} vs expected {getattr(expected.scorer, name)}"
        for name in ("dim", "num_features", "hidden", "attention_layers", "attention_heads")
        if getattr(found.scorer, name) != getattr(expected.scorer, name)
    ]
    if found.feature_names != expected.feature_names:
        diffs.append(
            f"features: stored {list(found.feature_names)} vs expected {list(expected.feature_names)}"
        )
    if diffs:
        hint = (
            " (the index has another embedding dimension)" if found.scorer.dim != expected.scorer.dim else ""
        )
        raise ArtifactError(f"{source}: policy does not match this configuration{hint}: " + "; ".join(diffs))
