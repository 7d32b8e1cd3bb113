"""``rayrec ope`` end to end: the log, the item source, the target and logging policies, the estimates, the JSON."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from envs.config import SlateEnvConfig
from envs.factory import build_simulator
from envs.policies import SIMULATION_POLICIES, make_policy
from rayrec import storage
from rayrec.ab.config import OpeConfig
from rayrec.ab.off_policy import evaluate_logged
from rayrec.config import load_config
from rayrec.errors import ConfigError, DataError
from rayrec.index import ItemIndex
from rayrec.logs.reader import SIMULATOR_FILE, ItemLookup, logged_requests, read_event_log
from rayrec.rerank import load_policy_for_index
from rayrec.slate_policy import SlatePolicy


def policy_source(config: OpeConfig) -> tuple[Callable[[str], SlatePolicy], ItemLookup]:
    """How to build a policy from a spec for this log, and the item embeddings its candidates are looked up in.

    With ``--index``, policies are built as the server builds them (:func:`rayrec.rerank.load_policy_for_index`: a ``fair`` re-ranker gets the index's item categories).
    Without it, the log must come from a simulated A/B (``EVENTS/simulator.yaml``): the simulator is
    rebuilt, its catalog supplies the embeddings and policies are built as the A/B runner built them (in
    that simulator). Policies that read the simulator's hidden state cannot be replayed on a log.
    """

    def replayable(spec: str) -> str:
        if spec in SIMULATION_POLICIES:
            raise ConfigError(
                f"policy {spec!r} reads the simulator's hidden state, which a log does not hold: it cannot "
                "be replayed on logged requests"
            )
        return spec

    if config.index is not None:
        index = ItemIndex.load(config.index)
        return lambda spec: load_policy_for_index(replayable(spec), config.index), ItemLookup(
            index.item_ids, index.embeddings, item_log=index.item_log
        )
    sim_file = storage.join(config.events, SIMULATOR_FILE)
    if not storage.exists(sim_file):
        raise ConfigError(
            f"{config.events} has no {SIMULATOR_FILE}: pass --index DIR, the index the log was written with"
        )
    sim = build_simulator(load_config(SlateEnvConfig, sim_file), batch=1)
    return lambda spec: make_policy(replayable(spec), sim), ItemLookup(
        sim.catalog.item_ids, sim.catalog.embeddings, sim.config.feature_names
    )


def logger_specs(config: OpeConfig) -> dict[str, str]:
    """``--logger NAME=POLICY`` as {logged policy name: spec}."""
    specs = {}
    for item in config.logger:
        name, sep, spec = item.partition("=")
        if not (sep and name and spec):
            raise ConfigError(f"--logger {item!r}: expected NAME=POLICY (a logged policy name and its spec)")
        specs[name] = spec
    return specs


def evaluate_offline(config: OpeConfig) -> dict[str, Any]:
    """Estimate the target's value on the logged requests; the ``ope --json`` document."""
    if not storage.exists(config.events):
        raise DataError(f"{config.events}: no such event-log directory")
    log = read_event_log(config.events)  # checked before the policies and index are loaded
    build, items = policy_source(config)
    requests = logged_requests(log, items)
    specs = logger_specs(config)
    built: dict[str, SlatePolicy] = {}

    def policy(spec: str) -> SlatePolicy:
        if spec not in built:
            built[spec] = build(spec)
        return built[spec]

    target = policy(config.target)
    loggers = {}
    for name in requests.logger_names:
        try:
            loggers[name] = policy(specs.get(name, name))
        except ConfigError as exc:
            if name in specs:
                raise
            raise ConfigError(
                f"{config.events}: the log's policy {name!r} cannot be rebuilt by its name ({exc}); say what "
                f"it was with --logger {name}=POLICY"
            ) from None
    result = evaluate_logged(
        requests,
        target,
        loggers,
        alpha=config.alpha,
        resamples=config.resamples,
        seed=config.seed,
        clip=config.clip,
    )
    return result.to_json() | {"target": config.target, "fallback_requests": log.fallback_requests}
