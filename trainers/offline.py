"""``rayrec train-policy --from-events DIR``: learn a slate policy from an event log, export it like any policy.

    rayrec train-policy --from-events runs/ab/events --offline-algo marwil --out runs/offline
    rayrec train-policy --from-events runs/events --index runs/index --offline-algo reinforce-topk --out runs/rf

The log's requests (what each ranker saw, the slate it showed, the propensities, the clicks:
:mod:`trainers.offline_data`) train the same :class:`rayrec.slate_scorer.SlateScorer` PPO trains, with

- ``bc`` / ``marwil``: RLlib's offline API (:mod:`trainers.offline_rllib`): Ray Data reads the requests,
  written as Parquet transitions under ``OUT/transitions/``;
- ``reinforce-topk``: REINFORCE with the top-K off-policy correction (:mod:`trainers.offline_reinforce`).

The export (``OUT/policy/``, :func:`rayrec.slate_scorer.save_exported_policy`) is what ``rayrec simulate
--policy``, ``rayrec serve`` and ``rayrec ab`` load. It is written under a temporary name and renamed into
place at the end, so a run that fails leaves no half-written policy. Every ``--validate-every``
iterations the deterministic policy plays ``--validate-users`` validation users of the log's world; with
``--export best`` the best weights are exported. The final evaluation (``eval.*``) plays the held-out test
users against ``--baselines`` and the log's own logging policies (paired intervals).
"""

from __future__ import annotations

import copy
import os
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import torch

from envs.policies import POLICY_NAMES
from envs.spec import resolve_env_config
from rayrec import storage
from rayrec.config import save_config, to_plain
from rayrec.errors import ConfigError
from rayrec.runtime import init_ray
from rayrec.slate_scorer import ExportConfig, ScorerConfig, SlateScorer, save_exported_policy
from trainers.offline_data import (
    TRANSITIONS_DIR,
    TrainingArrays,
    load_logged,
    log_world,
    training_arrays,
    write_transitions,
)
from trainers.offline_reinforce import TopKCorrection, train_topk_reinforce
from trainers.policy_config import TrainPolicyConfig
from trainers.policy_eval import evaluate_policies, validation_return, write_evaluation
from trainers.run_dir import POLICY_DIR, ProgressLog, local_run_dir

TRAINERS = {"bc": "rllib-bc", "marwil": "rllib-marwil", "reinforce-topk": "reinforce-topk"}


def export_atomically(scorer: SlateScorer, config: ExportConfig, out: Path) -> str:
    """Write the export to a temporary directory beside ``out/policy`` and rename it into place."""
    final = out / POLICY_DIR
    tmp = out / f".{POLICY_DIR}-{uuid.uuid4().hex[:8]}.tmp"
    try:
        save_exported_policy(scorer, config, str(tmp))
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(final)


class BestWeights:
    """The weights to export: the best on the validation users so far (``--export best``), or the last."""

    def __init__(self, cfg: TrainPolicyConfig, env_config) -> None:
        self.cfg, self.env_config = cfg, env_config
        self.value, self.iteration, self.state = float("-inf"), 0, None

    def validate(self, scorer: SlateScorer, iteration: int, row: dict[str, float]) -> None:
        cfg = self.cfg
        due = cfg.validate_every and (iteration % cfg.validate_every == 0 or iteration == cfg.iterations)
        if not due:
            return
        scorer.eval()
        value = validation_return(
            scorer, self.env_config.replace(user_split="validation"), cfg.validate_users, cfg.eval_seed + 1
        )
        row["eval/session_return"] = value
        if cfg.export == "best" and value > self.value:
            self.value, self.iteration = value, iteration
            self.state = copy.deepcopy(scorer.state_dict())

    def final(self, scorer: SlateScorer) -> tuple[SlateScorer, int, float | None]:
        if self.state is None:
            return scorer, self.cfg.iterations, None
        scorer.load_state_dict(self.state)
        return scorer, self.iteration, self.value


def _progress_line(row: dict[str, float], total: int) -> str:
    val = row.get("eval/session_return")
    extra = f"  eval/session_return {val:.3f}" if val is not None else ""
    return (
        f"iter {int(row['iteration']):>4}/{total}  train/policy_loss {row.get('train/policy_loss', float('nan')):.4f}"
        f"{extra}  {row['train/wall_s']:.0f}s"
    )


def _train_rllib(
    cfg: TrainPolicyConfig, data: TrainingArrays, scorer: SlateScorer, out: Path, step: Any
) -> None:
    """BC or MARWIL on RLlib's offline API; ``scorer`` gets the learner's weights after every iteration."""
    from trainers.offline_rllib import build_offline_config, learner_metrics, learner_scorer_state

    paths = write_transitions(data, out / TRANSITIONS_DIR)
    init_ray(cfg.address, log_dir=None if storage.is_remote(cfg.out) else out, verbose=cfg.verbose)
    algo = build_offline_config(cfg.offline_algo, cfg, data, paths).build_algo()
    try:
        for iteration in range(1, cfg.iterations + 1):
            metrics = learner_metrics(algo.train())
            scorer.load_state_dict(learner_scorer_state(algo))
            step(iteration, metrics)
    finally:
        algo.stop()


def train_offline(cfg: TrainPolicyConfig) -> dict[str, Any]:
    """Train ``cfg.offline_algo`` on the log ``cfg.from_events``, export and evaluate; returns the summary."""
    if storage.exists(storage.join(cfg.out, POLICY_DIR)):
        raise ConfigError(f"{cfg.out} already holds an exported policy ({POLICY_DIR}/): pass another --out")
    env_config = log_world(cfg.from_events, resolve_env_config(cfg, user_split="train"))
    requests = load_logged(cfg.from_events, env_config)
    data = training_arrays(requests, cfg.gamma, cfg.from_events)
    # validated on the features the offline scorer reads (training_arrays: FEATURE_NAMES)
    env_config = env_config.replace(
        num_candidates=data.num_candidates,
        slate_size=data.slate_size,
        observe_rating=False,
        observe_hidden=(),
    )
    scorer_config = ScorerConfig(
        dim=requests.item_embeddings.shape[1],
        hidden=cfg.hidden,
        attention_layers=cfg.attention_layers,
        attention_heads=cfg.attention_heads,
    )
    name = cfg.policy_name or cfg.offline_algo  # TrainPolicyConfig names it after --offline-algo
    print(
        f"{cfg.from_events}: {data.size} logged requests of {requests.num_users} users "
        f"(K={data.num_candidates}, k={data.slate_size}; {data.dropped} shorter slates left out); "
        f"logging policies {', '.join(requests.logger_names)}",
        flush=True,
    )
    with local_run_dir(cfg) as out:
        save_config(cfg, out)
        torch.set_num_threads(cfg.torch_threads)
        progress = ProgressLog(out, 0)
        best = BestWeights(cfg, env_config)
        started = time.perf_counter()

        torch.manual_seed(cfg.seed)
        scorer = SlateScorer(scorer_config)

        def step(iteration: int, metrics: dict[str, float]) -> None:
            # No simulator sampling offline: env steps are the logged requests trained on.
            row = {
                "iteration": float(iteration),
                "train/env_steps": float(iteration * min(cfg.train_batch_size, data.size)),
                "sim/session_return": float("nan"),
                **metrics,
            }
            best.validate(scorer, iteration, row)
            scorer.train()
            row["train/wall_s"] = time.perf_counter() - started
            progress.add(row)
            if iteration == 1 or iteration % max(cfg.validate_every, 1) == 0 or iteration == cfg.iterations:
                print(_progress_line(row, cfg.iterations), flush=True)

        if cfg.offline_algo == "reinforce-topk":
            settings = TopKCorrection(
                gamma=cfg.gamma, cap=cfg.topk_cap, lr=cfg.lr, batch_size=cfg.train_batch_size
            )
            train_topk_reinforce(scorer, data, settings, cfg.iterations, cfg.seed, step)
        else:
            _train_rllib(cfg, data, scorer, out, step)
        progress.close()
        scorer, iteration, validation = best.final(scorer)
        export = ExportConfig(
            scorer=scorer_config,
            slate_size=data.slate_size,
            num_candidates=data.num_candidates,
            budget=env_config.budget,
            name=name,
            metadata={
                "trainer": TRAINERS[cfg.offline_algo],
                "events": cfg.from_events,
                "logged_requests": data.size,
                "logging_policies": list(requests.logger_names),
                "gamma": cfg.gamma,
                "iteration": iteration,
                "validation_return": validation,
                "seed": cfg.seed,
                "env": to_plain(env_config),
            },
        )
        policy_dir = export_atomically(scorer, export, out)
        print(f"exported policy → {storage.join(cfg.out, POLICY_DIR)}", flush=True)
        if cfg.eval_users == 0:
            return {"policy_dir": policy_dir, "rows": progress.rows, "markdown": "(no held-out evaluation)\n"}
        loggers = [spec for spec in requests.logger_names if spec in POLICY_NAMES]
        baselines = list(dict.fromkeys([*loggers, *cfg.baselines]))
        summary = evaluate_policies(
            policy_dir, env_config.replace(user_split="test"), baselines, cfg.eval_users, cfg.eval_seed, name
        )
        write_evaluation(
            summary, out, progress.rows, command=" ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
        )
        return summary
