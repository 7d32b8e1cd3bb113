"""The metrics vocabulary: every metric rayrec reports is defined once, in one of these modules.

- :mod:`rayrec.metrics.retrieval`: ranking metrics of leave-last-out retrieval (``recall@K``, ``ndcg@K``, ``mrr``).
- :mod:`rayrec.metrics.session`: per-session outcomes of simulated users (``session_return``, ``ctr``, ...),
  their units and formulas, and the one interval method for each kind of quantity.
"""
