"""Text augmentation of the encoder's SimCSE views: word dropout, adjacent swaps and masking."""

from __future__ import annotations

import random
from collections.abc import Sequence


class TextAugmenter:
    """Word-level noise for positive views: drop, swap adjacent, or mask words, each with its probability.

    References:
        - Wei & Zou, *EDA: Easy Data Augmentation Techniques for Boosting Performance on Text Classification
          Tasks*, EMNLP 2019.
    """

    def __init__(
        self,
        word_dropout: float = 0.1,
        swap: float = 0.1,
        mask: float = 0.1,
        mask_token: str = "[MASK]",
        seed: int = 0,
    ):
        for name, p in (("word_dropout", word_dropout), ("swap", swap), ("mask", mask)):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"{name} probability must be in [0, 1), got {p}")
        self.word_dropout, self.swap, self.mask, self.mask_token = word_dropout, swap, mask, mask_token
        self.rng = random.Random(seed)

    def __call__(self, text: str) -> str:
        words = text.split()
        if len(words) < 2:
            return text
        # keep at least one word so a view never becomes empty
        kept = [w for w in words if self.rng.random() >= self.word_dropout] or [self.rng.choice(words)]
        for i in range(len(kept) - 1):
            if self.rng.random() < self.swap:
                kept[i], kept[i + 1] = kept[i + 1], kept[i]
        return " ".join(self.mask_token if self.rng.random() < self.mask else w for w in kept)

    def batch(self, texts: Sequence[str]) -> list[str]:
        return [self(t) for t in texts]
