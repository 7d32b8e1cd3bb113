"""``rayrec ope`` end to end: the item source and target policy for a log, the estimates, the JSON."""

from __future__ import annotations

from typing import Any

from envs.config import SlateEnvConfig
from envs.factory import build_simulator
from envs.policies import make_policy
from rayrec import storage
from rayrec.ab.config import OpeConfig
from rayrec.ab.experiment import SIMULATOR_FILE
from rayrec.ab.ope import estimate_all
from rayrec.ab.replay import ItemLookup, LoggedData, load_logged_slates, read_event_log
from rayrec.baselines import load_policy
from rayrec.config import load_config
from rayrec.errors import ConfigError, DataError
from rayrec.index import ItemIndex
from rayrec.slate_policy import SlatePolicy


def target_and_items(config: OpeConfig) -> tuple[SlatePolicy, ItemLookup]:
    """The target policy and the item embeddings the log's candidates are looked up in.

    With ``--index``, the policy is built as the server builds it (:func:`rayrec.baselines.load_policy`).
    Without it, the log must come from a simulated A/B (``EVENTS/simulator.yaml``): the simulator is
    rebuilt, its catalog supplies the embeddings and the policy is built as the A/B runner built it (in
    that simulator).
    """
    if config.index is not None:
        index = ItemIndex.load(config.index)
        return load_policy(config.target), ItemLookup(index.item_ids, index.embeddings)
    sim_file = storage.join(config.events, SIMULATOR_FILE)
    if not storage.exists(sim_file):
        raise ConfigError(
            f"{config.events} has no {SIMULATOR_FILE}: pass --index DIR, the index the log was written with"
        )
    sim = build_simulator(load_config(SlateEnvConfig, sim_file), batch=1)
    return make_policy(config.target, sim), ItemLookup(sim.catalog.item_ids, sim.catalog.embeddings)


def evaluate_offline(config: OpeConfig) -> dict[str, Any]:
    """Estimate the target's value on the logged requests; the ``ope --json`` document."""
    if not storage.exists(config.events):
        raise DataError(f"{config.events}: no such event-log directory")
    log = read_event_log(config.events)  # checked before the policy and index are loaded
    target, items = target_and_items(config)
    logged: LoggedData = load_logged_slates(log, target, items)
    estimates = estimate_all(logged.slates, alpha=config.alpha, resamples=config.resamples, seed=config.seed)
    return {
        "target": config.target,
        "n": logged.requests,
        "estimators": {
            name: {"value": e.value, "ci95": [e.ci_low, e.ci_high]} for name, e in estimates.items()
        },
        "users": logged.users,
        "logging_policies": logged.logging_policies,
        "fallback_requests": logged.fallback_requests,
        "value": "expected reward (clicks) per request, item-position model",
    }
