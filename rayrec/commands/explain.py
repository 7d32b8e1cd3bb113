"""``rayrec explain``: why a user gets the items they get, offline, through the serving pipeline's own code.

rayrec explain --index runs/index --policy runs/policy --history item-1,item-7,item-9 --k 5
rayrec explain --index runs/index --data data/ml --user u123 --json why.json
rayrec explain --index runs/index --history item-1 --query "space opera"

Retrieval, ranking and the explanation are :mod:`serving.pipeline`'s (the functions the server's
deployments call), so the answer is the one ``POST /recommend`` with ``"explain": true`` gives for the same
history, policy and index; attribution methods: :mod:`rayrec.explain`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from rayrec import storage
from rayrec.cli import add_command
from rayrec.config import add_config_args, config_from_args
from rayrec.errors import ConfigError


@dataclasses.dataclass(kw_only=True)
class ExplainConfig:
    """``rayrec explain``: one user's slate with, per item, the history items and features behind it."""

    index: str
    """Index directory (``rayrec build-index``)."""
    policy: str = "retrieval"
    """The ranker: random, retrieval, greedy or a trained policy directory."""
    history: str | None = None
    """The user's history: item ids separated by commas, oldest first."""
    user: str | None = None
    """Or: a user id of ``--data``'s interactions; their items (oldest first) are the history."""
    data: str | None = None
    """Data directory whose interactions ``--user`` is read from."""
    query: str | None = None
    """Free text, embedded by the index's encoder (as the server's ``query``)."""
    k: int = 10
    """Slate size."""
    num_candidates: int | None = None
    """K, candidates retrieved (default: a trained policy's own K, else the server's default)."""
    session_step: int = 0
    """Requests already answered in the user's session (a trained policy's budget feature)."""
    max_history: int = 500
    """Most recent history items used (the server's default ``max_history``)."""
    json: str | None = None
    """Also write the answer (items with their explanations) as JSON here."""

    def __post_init__(self) -> None:
        if (self.history is None) == (self.user is None):
            raise ConfigError(
                "give the history either as --history ID,ID,... or as --user ID with --data DIR"
            )
        if self.user is not None and self.data is None:
            raise ConfigError("--user needs --data DIR (the interactions it is read from)")
        if self.k < 1 or self.max_history < 1 or self.session_step < 0:
            raise ConfigError("--k and --max-history must be >= 1 and --session-step >= 0")
        if self.num_candidates is not None and self.num_candidates < self.k:
            raise ConfigError(f"--num-candidates {self.num_candidates} must be >= --k {self.k}")


def user_history(data: str, user: str, limit: int) -> list[str]:
    """The ``limit`` most recent items of ``user`` in ``data``'s interactions, oldest first."""
    import pyarrow.compute as pc

    from rayrec.data.io import read_interactions

    table = read_interactions(data)
    mine = table.filter(pc.equal(table["user_id"], user))
    if mine.num_rows == 0:
        raise ConfigError(f"user {user!r} has no interactions in {data}")
    order = pc.sort_indices(mine, sort_keys=[("timestamp", "ascending")])
    return [str(i) for i in mine.take(order)["item_id"].to_pylist()][-limit:]


def explain_request(config: ExplainConfig) -> dict:
    """The answer for one request, as the server computes it: items with score, propensity, explanation."""
    from rayrec.baselines import load_policy
    from rayrec.index import ItemIndex
    from serving.pipeline import Retrieval, rank, trained_config
    from serving.settings import DEFAULT_NUM_CANDIDATES

    index = ItemIndex.load(config.index, verify=True)
    policy = load_policy(config.policy)
    trained = trained_config(policy)
    num_candidates = config.num_candidates or (
        trained.num_candidates if trained is not None else DEFAULT_NUM_CANDIDATES
    )
    if trained is not None and trained.num_candidates != num_candidates:
        raise ConfigError(
            f"policy {config.policy} was trained on K={trained.num_candidates} candidates: leave out "
            f"--num-candidates or set it to {trained.num_candidates}"
        )
    if config.history is not None:
        history = [h.strip() for h in config.history.split(",") if h.strip()]
    else:
        history = user_history(config.data, config.user, config.max_history)
    history = history[-config.max_history :]
    unknown = [h for h, row in zip(history, index.lookup(history), strict=True) if row < 0]
    if unknown:
        shown = ", ".join(repr(h) for h in unknown[:5]) + (
            f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        )
        raise ConfigError(f"history items not in the index {config.index}: {shown}")
    query = None
    if config.query is not None:
        from rayrec.encoding import TextEncoder

        if not index.encoder:
            raise ConfigError(f"index {config.index} names no encoder to embed --query with")
        query = TextEncoder.load(index.encoder).encode([config.query])[0]  # [d]
    retrieval = Retrieval(index, num_candidates, config.k)
    context = retrieval.context(history, query, config.session_step, explain=True)
    ranked = rank(policy, [(retrieval.retrieve([context])[0], config.k)])[0]
    return {
        "policy": ranked.policy,
        "history": history,
        "cold_start": ranked.cold_start,
        "num_candidates": num_candidates,
        "items": [
            {"item_id": item, "score": score, "propensity": propensity, "explanation": why}
            for item, score, propensity, why in zip(
                ranked.item_ids, ranked.scores, ranked.propensities, ranked.explanations, strict=True
            )
        ],
    }


def format_answer(answer: dict) -> str:
    """The answer as text: one block per item, the named history items and the ranker's contributions."""
    lines = [
        f"policy {answer['policy']}, {len(answer['history'])} history items, K={answer['num_candidates']}"
        + (" (cold start: popular, diverse items)" if answer["cold_start"] else "")
    ]
    for rank_, item in enumerate(answer["items"], 1):
        why = item["explanation"]
        retrieval = f"  retrieval {why['retrieval_score']:.4f}" if "retrieval_score" in why else ""
        lines.append(f"{rank_:>2}. {item['item_id']}  score {item['score']:.4f}{retrieval}")
        for credit in why["history"]:
            lines.append(
                f"      because of {credit['item_id']}: removing it lowers retrieval by {credit['drop']:+.4f} "
                f"(share {credit['share']:+.4f})"
            )
        if "query" in why:
            lines.append(f"      the query's share {why['query']:+.4f}")
        ranker = why["ranker"]
        parts = ", ".join(f"{name} {value:+.4f}" for name, value in ranker["features"].items())
        lines.append(
            f"      ranker ({ranker['method']}): base {ranker['base']:+.4f}" + (f", {parts}" if parts else "")
        )
    return "\n".join(lines)


def _explain(args: argparse.Namespace) -> int:
    config = config_from_args(ExplainConfig, args)
    answer = explain_request(config)
    print(format_answer(answer))
    if config.json:
        storage.write_text(config.json, json.dumps(answer, indent=2) + "\n")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers,
        "explain",
        _explain,
        help="why a user gets each item: the history items and ranker features behind it (offline)",
        description=__doc__,
    )
    add_config_args(parser, ExplainConfig)
