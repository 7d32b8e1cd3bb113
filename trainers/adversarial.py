"""Adversarial training of the encoder: FGM perturbation of the word embeddings along the loss gradient."""

from __future__ import annotations

import torch
from torch import nn


class FGM:
    """Fast Gradient Method on the word-embedding matrix: after the clean backward pass, add
    ``epsilon · g / ||g||`` to the embeddings, run the loss again and back-propagate it too, then restore.
    The extra gradient makes the encoder robust to small changes of the input tokens.

    References:
        - Goodfellow et al., *Explaining and Harnessing Adversarial Examples*, ICLR 2015.
        - Miyato et al., *Adversarial Training Methods for Semi-Supervised Text Classification*, ICLR 2017.
    """

    def __init__(self, embeddings: nn.Embedding, epsilon: float = 1.0):
        if epsilon <= 0:
            raise ValueError(f"FGM epsilon must be > 0, got {epsilon}")
        self.weight = embeddings.weight
        self.epsilon = epsilon
        self._backup: torch.Tensor | None = None

    def attack(self) -> bool:
        """Perturb the embeddings along their current gradient; False when there is no gradient yet."""
        grad = self.weight.grad
        if grad is None:
            return False
        norm = grad.norm()
        if not torch.isfinite(norm) or norm == 0:
            return False
        # a copy, not a subtraction, restores them: w + δ − δ is not w in floating point, and frozen embeddings
        # must stay exactly what they were
        self._backup = self.weight.data.clone()  # [V, d]
        self.weight.data.add_(self.epsilon * grad / norm)
        return True

    def restore(self) -> None:
        """Undo :meth:`attack`, exactly."""
        if self._backup is not None:
            self.weight.data.copy_(self._backup)
            self._backup = None
