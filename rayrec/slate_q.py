"""SlateQ's slate value: item-wise Q values combined through a conditional-logit choice model (pure torch).

SlateQ (Ie et al., IJCAI 2019) decomposes the value of showing slate ``A`` in state ``s`` into the values of
its items, weighted by the probability that the user picks each one::

    Q(s, A) = sum_{i in A ∪ {⊥}} P(i | s, A) Qbar(s, i)

where ``⊥`` is "no click" and ``P`` is a conditional logit: item ``i`` shown at position ``p`` has weight
``exp(v(s, i) + pos_p)``, no-click has weight ``exp(0) = 1`` (the choice model of
:class:`rayrec.click_logit.SlateClickModel`). Learning then only needs the item-wise ``Qbar``, trained by
TD on the item that was actually consumed (see ``trainers.slateq``); choosing a slate is the combinatorial
step done by :func:`greedy_slate`. The same functions serve training (the target's ``max_A'``) and the
exported policy (:class:`rayrec.slate_scorer.ExportedPolicy` with a choice model), so what is served is
exactly what was learned.

References:
    - Ie, E., Jain, V., Wang, J., Narvekar, S., Agarwal, R., Wu, R., Cheng, H.-T., Chandra, T. &
      Boutilier, C. (2019). "SlateQ: A Tractable Decomposition for Reinforcement Learning with
      Recommendation Sets." IJCAI. (§4 the decomposition, §5 greedy slate optimisation.)
"""

from __future__ import annotations

import torch


def choice_weights(
    item_logits: torch.Tensor, slate: torch.Tensor, position_logits: torch.Tensor
) -> torch.Tensor:
    """Unnormalised conditional-logit weights of a slate's items, no-click last.

    Args:
        item_logits: [B, K] position-free click logits ``v(s, j)`` of every candidate.
        slate: [B, k] int64 candidate indices in display order.
        position_logits: [k] additive logit of each position (``pos_0 = 0`` by convention).

    Returns:
        [B, k + 1]: ``exp(v + pos_p)`` per shown item, then ``1`` for no click.
    """
    logits = item_logits.gather(1, slate.long()) + position_logits[: slate.shape[1]]  # [B, k]
    full = torch.cat([logits, torch.zeros_like(logits[:, :1])], dim=1)  # [B, k + 1]
    return full.exp()


def choice_probs(
    item_logits: torch.Tensor, slate: torch.Tensor, position_logits: torch.Tensor
) -> torch.Tensor:
    """[B, k + 1] probability of clicking each shown item (display order), no-click last."""
    return torch.softmax(torch.log(choice_weights(item_logits, slate, position_logits)), dim=1)  # [B, k + 1]


def slate_value(
    item_q: torch.Tensor,
    null_q: torch.Tensor,
    item_logits: torch.Tensor,
    position_logits: torch.Tensor,
    slate: torch.Tensor,
) -> torch.Tensor:
    """SlateQ's ``Q(s, A) = sum_i P(i | s, A) Qbar(s, i)`` with no-click included.

    Args:
        item_q: [B, K] ``Qbar(s, j)``: value of the user clicking candidate j.
        null_q: [B] ``Qbar(s, ⊥)``: value of no click.
        item_logits, position_logits, slate: as in :func:`choice_weights`.

    Returns:
        [B] the slate's value.
    """
    probs = choice_probs(item_logits, slate, position_logits)  # [B, k + 1]
    values = torch.cat([item_q.gather(1, slate.long()), null_q.unsqueeze(1)], dim=1)  # [B, k + 1]
    return (probs * values).sum(dim=1)


def greedy_slate(
    item_q: torch.Tensor,
    null_q: torch.Tensor,
    item_logits: torch.Tensor,
    position_logits: torch.Tensor,
    slate_size: int,
) -> torch.Tensor:
    """Greedy slate optimisation (Ie et al. 2019, §5): fill positions top to bottom, each time with the
    candidate that maximises the value of the slate so far, then swap adjacent items while that raises it.

    With ``N = sum_shown w Qbar + Qbar(⊥)`` and ``D = sum_shown w + 1``, adding candidate j at position p
    makes the value ``(N + w_jp Qbar_j) / (D + w_jp)``; every position is filled (a slate always has k items).
    The swaps matter because positions weigh differently: the first fill may put a likelier but less
    valuable item above a more valuable one. A heuristic (Ie et al. solve the position-free problem exactly
    by linear programming and find greedy close to it); its cost is O(k K + k^2) per row.

    Args:
        item_q: [B, K]; null_q: [B]; item_logits: [B, K]; position_logits: [>= slate_size].

    Returns:
        [B, slate_size] int64 distinct candidate indices in display order.
    """
    batch, num = item_q.shape
    if not 1 <= slate_size <= num:
        raise ValueError(f"slate size {slate_size} must be in 1..{num} (the candidate count)")
    numerator = null_q.clone()  # [B]
    denominator = torch.ones_like(null_q)  # [B]
    taken = torch.zeros(batch, num, dtype=torch.bool, device=item_q.device)
    chosen = []
    for p in range(slate_size):
        w = (item_logits + position_logits[p]).exp()  # [B, K]
        value = (numerator[:, None] + w * item_q) / (denominator[:, None] + w)  # [B, K]
        best = value.masked_fill(taken, float("-inf")).argmax(dim=1)  # [B]
        rows = torch.arange(batch, device=item_q.device)
        numerator = numerator + w[rows, best] * item_q[rows, best]
        denominator = denominator + w[rows, best]
        taken[rows, best] = True
        chosen.append(best)
    slate = torch.stack(chosen, dim=1)  # [B, k]
    # Filling top-down may leave a better item below a worse one (position weights differ): adjacent swaps
    # that raise the slate's value, until none does (at most k passes).
    for _ in range(slate_size - 1):
        improved = False
        for p in range(slate_size - 1):
            swapped = slate.clone()
            swapped[:, [p, p + 1]] = slate[:, [p + 1, p]]
            better = (
                slate_value(item_q, null_q, item_logits, position_logits, swapped)
                > slate_value(item_q, null_q, item_logits, position_logits, slate) + 1e-9
            )
            slate = torch.where(better[:, None], swapped, slate)
            improved = improved or bool(better.any())
        if not improved:
            break
    return slate
