"""Training objectives for the item text encoder, each a small module in the style of sentence-transformers' losses.

- :class:`InfoNCELoss`: softmax cross-entropy over in-batch candidates with a temperature and logQ correction.
- :class:`NextItemLoss`: a user's recent history (mean of item embeddings) → the next item.
- :class:`SimCSELoss`: two dropout-noised (optionally augmented) views of the same item text are positives.

The views' text noise is :class:`trainers.augmentation.TextAugmenter`; adversarial training of the word
embeddings is :class:`trainers.adversarial.FGM`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class InfoNCELoss(nn.Module):
    """Cross-entropy of each query against a shared set of candidates, the true one marked by ``labels``.

    Scores are cosine similarities divided by ``temperature``. With ``log_q`` given, each candidate's
    logit is lowered by the log of its probability of appearing in a batch: in-batch negatives sample
    popular items more often, and without the correction the model learns to under-score them.

    References:
        - Oord et al., *Representation Learning with Contrastive Predictive Coding*, 2018 (InfoNCE).
        - Henderson et al., *Efficient Natural Language Response Suggestion for Smart Reply*, 2017 (in-batch negatives).
        - Yi et al., *Sampling-Bias-Corrected Neural Modeling for Large Corpus Item Recommendations*, RecSys 2019 (logQ).
    """

    def __init__(self, temperature: float = 0.05):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def forward(
        self,
        queries: torch.Tensor,
        candidates: torch.Tensor,
        labels: torch.Tensor,
        log_q: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean loss over queries.

        Args:
            queries: [B, d] L2-normalised.
            candidates: [C, d] L2-normalised.
            labels: [B] index of each query's positive in ``candidates``.
            log_q: [C] log sampling probability of each candidate, or None for no correction.
            mask: [B, C] True where a candidate must not count as a negative (never the label itself).
        """
        logits = queries @ candidates.T / self.temperature  # [B, C]
        if log_q is not None:
            logits = logits - log_q.unsqueeze(0)  # [B, C]
        if mask is not None:
            logits = logits.masked_fill(mask, torch.finfo(logits.dtype).min)  # [B, C]
        return F.cross_entropy(logits.float(), labels)


class NextItemLoss(nn.Module):
    """Two-tower next-item objective: the pooled history of a user should retrieve the item they chose next.

    The user tower is the L2-normalised mean of the user's recent item embeddings (the same query the
    index is searched with at evaluation), so both towers share one text encoder. Candidates are the
    batch's distinct targets; items in a user's own history are masked out as negatives, as they are
    excluded at retrieval time.

    References:
        - Covington et al., *Deep Neural Networks for YouTube Recommendations*, RecSys 2016 (history pooling).
        - Yi et al., RecSys 2019 (two-tower retrieval with in-batch negatives and logQ correction).
    """

    def __init__(self, temperature: float = 0.05):
        super().__init__()
        self.info_nce = InfoNCELoss(temperature)

    def forward(
        self,
        item_embeddings: torch.Tensor,
        history: torch.Tensor,
        target: torch.Tensor,
        log_q: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean loss over users.

        Args:
            item_embeddings: [U, d] normalised embeddings of the batch's distinct items.
            history: [B, H] rows into ``item_embeddings``, -1 for padding (at least one item per user).
            target: [B] row of each user's next item in ``item_embeddings``.
            log_q: [U] log sampling probability of each distinct item, or None.
        """
        valid = history >= 0  # [B, H]
        gathered = item_embeddings[history.clamp(min=0)]  # [B, H, d]
        pooled = (gathered * valid.unsqueeze(-1)).sum(1) / valid.sum(1, keepdim=True).clamp(min=1)  # [B, d]
        queries = F.normalize(pooled, dim=-1)  # [B, d]
        candidates, labels = torch.unique(target, return_inverse=True)  # [C], [B]
        seen = (history.unsqueeze(-1) == candidates.view(1, 1, -1)).any(1)  # [B, C]
        seen[torch.arange(len(labels), device=labels.device), labels] = False  # the positive always counts
        return self.info_nce(
            queries, item_embeddings[candidates], labels, None if log_q is None else log_q[candidates], seen
        )


class SimCSELoss(nn.Module):
    """Unsupervised SimCSE: two encodings of the same text (different dropout masks, optionally augmented
    text) are positives; the other texts in the batch are negatives. Symmetric in the two views.

    It trains on item text alone, so items nobody has interacted with yet still move in the space.

    References:
        - Gao et al., *SimCSE: Simple Contrastive Learning of Sentence Embeddings*, EMNLP 2021.
    """

    def __init__(self, temperature: float = 0.05):
        super().__init__()
        self.info_nce = InfoNCELoss(temperature)

    def forward(self, view_a: torch.Tensor, view_b: torch.Tensor) -> torch.Tensor:
        """Args: view_a, view_b: [n, d] normalised embeddings of the same n texts."""
        labels = torch.arange(len(view_a), device=view_a.device)  # [n]
        return 0.5 * (self.info_nce(view_a, view_b, labels) + self.info_nce(view_b, view_a, labels))
