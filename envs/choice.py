"""How a user picks from a slate: a conditional logit over the shown items plus a no-click option."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from envs.catalog import ItemCatalog
from envs.config import SlateEnvConfig

NO_CLICK = -1
"""Chosen slate position meaning the user clicked nothing."""


class ChoiceModel(Protocol):
    """Answers B slates at once (swappable: tests pass a deterministic fake)."""

    def item_logits(
        self,
        interest: np.ndarray,
        items: np.ndarray,
        catalog: ItemCatalog,
        satiation: np.ndarray | None = None,
    ) -> np.ndarray:
        """[B, n] logits of items [B, n] for users with interests [B, d] (and satiation [B, d]), ignoring position."""
        ...

    def choose(
        self,
        interest: np.ndarray,
        slate: np.ndarray,
        catalog: ItemCatalog,
        rng: np.random.Generator,
        satiation: np.ndarray | None = None,
    ) -> np.ndarray:
        """[B] chosen slate position per row, or :data:`NO_CLICK`, for slates [B, k] of catalog indices."""
        ...


class ConditionalLogitChoice:
    """Multinomial logit with an outside option and position bias (a cascade-free examination model).

    The utility of item i for a user with interest x is
    ``u_i = x · e_i + clickbait_appeal * clickbait_i + popularity_appeal * popularity_i
    - satiation_penalty * max(0, e_i · σ)`` (σ: the user's satiation vector, see :class:`envs.users.UserState`),
    the outside
    option's is ``no_click_utility``; at slate position p the item's attractiveness is multiplied by
    ``position_decay ** p``. So

        P(i at p) = exp(u_i / T) * decay**p / (exp(u_0 / T) + sum_q exp(u_q / T) * decay**q).

    Clickbait and popularity enter the utility but not the user's interest: a clickbait item is
    clicked more than its relevance warrants (the response model then charges for it).

    References:
        McFadden, "Conditional logit analysis of qualitative choice behavior" (1973).
        Ie et al., "RecSim: A Configurable Simulation Platform for Recommender Systems" (2019).
    """

    def __init__(
        self,
        temperature: float,
        no_click_utility: float,
        position_decay: float,
        clickbait_appeal: float,
        popularity_appeal: float,
        satiation_penalty: float = 0.0,
    ) -> None:
        self.temperature = float(temperature)
        self.no_click_utility = float(no_click_utility)
        self.position_decay = float(position_decay)
        self.clickbait_appeal = float(clickbait_appeal)
        self.popularity_appeal = float(popularity_appeal)
        self.satiation_penalty = float(satiation_penalty)

    @classmethod
    def from_config(cls, config: SlateEnvConfig) -> ConditionalLogitChoice:
        return cls(
            temperature=config.temperature,
            no_click_utility=config.no_click_utility,
            position_decay=config.position_decay,
            clickbait_appeal=config.clickbait_appeal,
            popularity_appeal=config.popularity_appeal,
            satiation_penalty=config.satiation_penalty,
        )

    def item_logits(
        self,
        interest: np.ndarray,
        items: np.ndarray,
        catalog: ItemCatalog,
        satiation: np.ndarray | None = None,
    ) -> np.ndarray:
        emb = catalog.embeddings[items]  # [B, n, d]
        utility = np.einsum("bnd,bd->bn", emb, interest)  # [B, n]
        utility += (
            self.clickbait_appeal * catalog.clickbait[items]
            + self.popularity_appeal * catalog.popularity[items]
        )
        if satiation is not None and self.satiation_penalty:
            utility -= self.satiation_penalty * np.maximum(np.einsum("bnd,bd->bn", emb, satiation), 0.0)
        return utility / self.temperature

    def probabilities(
        self,
        interest: np.ndarray,
        slate: np.ndarray,
        catalog: ItemCatalog,
        satiation: np.ndarray | None = None,
    ) -> np.ndarray:
        """[B, k + 1] choice probabilities: column 0 is no click, column 1 + p is slate position p."""
        k = slate.shape[1]
        logits = self.item_logits(interest, slate, catalog, satiation) + np.arange(k) * np.log(
            self.position_decay
        )  # [B, k]
        outside = np.full((len(slate), 1), self.no_click_utility / self.temperature, dtype=logits.dtype)
        logits = np.concatenate([outside, logits], axis=1)  # [B, k + 1]
        logits -= logits.max(axis=1, keepdims=True)  # stable softmax
        weights = np.exp(logits)
        return weights / weights.sum(axis=1, keepdims=True)

    def choose(
        self,
        interest: np.ndarray,
        slate: np.ndarray,
        catalog: ItemCatalog,
        rng: np.random.Generator,
        satiation: np.ndarray | None = None,
    ) -> np.ndarray:
        probs = self.probabilities(interest, slate, catalog, satiation)  # [B, k + 1]
        # Inverse-CDF sampling: one uniform per row instead of a Python loop over rows.
        draw = rng.random((len(slate), 1))
        choice = (np.cumsum(probs, axis=1)[:, :-1] < draw).sum(axis=1)  # [B] in 0..k
        return (choice - 1).astype(np.int64)
