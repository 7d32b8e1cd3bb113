"""Train the slate re-ranking policy with PPO (RLlib, new API stack) in the ``rayrec/SlateRec-v0`` simulator.

    python -m trainers.policy --out runs/policy                       # built-in synthetic world
    python -m trainers.policy --index runs/index --data data/ml --out runs/policy --env-runners 2
    rayrec train-policy --out runs/policy --iterations 60 --resume     # continue from the last checkpoint

The same command scales from a laptop to a cluster: ``--env-runners``/``--envs-per-runner`` add
sampling actors, ``--learners``/``--gpus-per-learner`` add (GPU) learners, ``--address`` picks the cluster.

Outputs under ``--out``: ``config.yaml``, ``run.json`` (what the run is bound to: env and network),
``checkpoints/`` (RLlib checkpoints every ``--checkpoint-every`` iterations, for ``--resume``),
``progress.csv`` + ``progress.jsonl`` + ``tensorboard/`` (namespaced metrics, one row per iteration),
``policy/`` (the RLlib-free export, see :mod:`rayrec.slate_model`), and the final held-out evaluation
against the baselines: ``eval.json``, ``eval.md`` and ``learning_curve.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import json
import math
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from envs.config import SlateEnvConfig
from rayrec import storage
from rayrec.config import RayConfig, add_config_args, config_from_args, save_config, to_plain
from rayrec.errors import ArtifactError, ConfigError

if TYPE_CHECKING:
    from rayrec.slate_model import ScorerConfig, SlateScorer

RLLIB_ENV_NAME = "rayrec-slate-rllib"
MODULE_ID = "default_policy"
RUN_FILE = "run.json"
PROGRESS_CSV = "progress.csv"
PROGRESS_JSONL = "progress.jsonl"
CHECKPOINT_DIR = "checkpoints"
LATEST_FILE = "latest.json"
POLICY_DIR = "policy"


@dataclasses.dataclass(kw_only=True)
class TrainPolicyConfig(RayConfig):
    """``rayrec train-policy``: PPO with a Plackett–Luce slate policy, export, held-out evaluation."""

    out: str
    """Run directory (local path or URI: s3://, gs://, file://): checkpoints, metrics, the exported policy and
    the evaluation. A remote run is written locally and uploaded after every checkpoint and at the end."""
    index: str | None = None
    """Item index directory (``rayrec build-index``); default: the simulator's built-in synthetic catalog."""
    data: str | None = None
    """Data directory whose logged users start the simulated sessions (with ``--index``, or a synthetic world's)."""
    env_config: str | None = None
    """YAML of ``SlateEnvConfig`` fields (e.g. a calibrated simulator); ``--index``/``--data`` override its paths."""
    num_candidates: int | None = None
    """K, candidates per step (default: the simulator's)."""
    slate_size: int | None = None
    """k, items per slate (default: the simulator's)."""
    iterations: int = 30
    """PPO iterations (each samples ``train_batch_size`` env steps, then updates)."""
    env_runners: int = 0
    """Remote sampling actors (0: sample in the driver, fastest on a small machine)."""
    envs_per_runner: int = 128
    """Simulated users stepped together by each env runner (the native vector env)."""
    learners: int = 0
    """Remote learner actors (0: learn in the driver)."""
    gpus_per_learner: float = 0.0
    """GPUs per learner (with ``--learners 0``: 1 puts the driver's learner on a GPU)."""
    seed: int = 0
    """Seed of the env runners' users, the network initialisation and the sampling."""
    lr: float = 2e-3
    """Adam learning rate."""
    gamma: float = 0.95
    """Discount factor: how far ahead in the session the policy plans (1 / (1 - gamma) steps)."""
    gae_lambda: float = 0.95
    """GAE lambda: bias/variance trade-off of the advantage estimates."""
    entropy_coeff: float = 0.003
    """Weight of the Plackett–Luce entropy bonus (exploration)."""
    clip_param: float = 0.2
    """PPO's probability-ratio clip."""
    kl_coeff: float = 0.0
    """Initial weight of PPO's adaptive KL penalty (0 turns the penalty off; the clip already limits steps)."""
    vf_clip_param: float = 100.0
    """Clip of the squared value error per sample (session returns are in reward units, up to the budget)."""
    train_batch_size: int = 4096
    """Env steps sampled per iteration."""
    minibatch_size: int = 1024
    """Env steps per SGD minibatch."""
    num_epochs: int = 4
    """Passes over each iteration's batch."""
    hidden: int = 64
    """Width of the scorer network (per-candidate MLP, attention, value head)."""
    attention_layers: int = 1
    """Self-attention blocks across candidates."""
    attention_heads: int = 4
    """Heads per attention block."""
    entropy_samples: int = 1
    """Sampled prefixes per observation for the Plackett–Luce entropy and KL estimates."""
    checkpoint_every: int = 10
    """Save an RLlib checkpoint every this many iterations (and after the last)."""
    resume: bool = False
    """Continue from the latest checkpoint in ``--out`` (the run's env and network must be the same)."""
    validate_every: int = 5
    """Every this many iterations, evaluate the deterministic policy on ``validate_users`` held-out users (0: never)."""
    validate_users: int = 500
    """Users per periodic validation."""
    eval_users: int = 2000
    """Held-out simulated users (one session each) in the final evaluation against the baselines."""
    eval_seed: int = 1_000_003
    """Seed of the final evaluation's users (validation uses ``eval_seed + 1``; training never sees either)."""
    baselines: list[str] = dataclasses.field(
        default_factory=lambda: ["random", "retrieval", "greedy", "oracle"]
    )
    """Baselines of the final evaluation (repeat the flag to choose)."""
    export: Literal["best", "last"] = "best"
    """Which weights ``policy/`` holds: the best on the validation users (checked every ``validate_every``
    iterations, never the evaluation users) or the last iteration's."""
    policy_name: str = "ppo"
    """Name of the exported policy (reports and the event log's ``policy`` column)."""
    torch_threads: int = 1
    """Torch threads in the driver (which samples and learns with 0 runners/learners); 1 is fastest for this
    small network on a shared CPU. Ray gives remote actors one thread per CPU they hold."""

    def __post_init__(self) -> None:
        positive = (
            "iterations",
            "torch_threads",
            "envs_per_runner",
            "train_batch_size",
            "minibatch_size",
            "num_epochs",
        )
        problems = [f"{n} must be >= 1 (got {getattr(self, n)})" for n in positive if getattr(self, n) < 1]
        for name in (
            "env_runners",
            "learners",
            "gpus_per_learner",
            "checkpoint_every",
            "validate_every",
            "eval_users",
        ):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0 (got {getattr(self, name)})")
        if self.minibatch_size > self.train_batch_size:
            problems.append(
                f"minibatch_size {self.minibatch_size} exceeds train_batch_size {self.train_batch_size}"
            )
        if not 0 < self.gamma <= 1 or not 0 <= self.gae_lambda <= 1:
            problems.append(
                f"gamma must be in (0, 1] and gae_lambda in [0, 1] (got {self.gamma}, {self.gae_lambda})"
            )
        if self.lr <= 0 or self.entropy_coeff < 0 or self.kl_coeff < 0 or self.clip_param <= 0:
            problems.append("lr and clip_param must be > 0, entropy_coeff and kl_coeff >= 0")
        if problems:
            raise ConfigError("TrainPolicyConfig: " + "; ".join(problems))
        from rayrec.slate_model import ScorerConfig

        # A bad network shape fails here, before the simulator or Ray start (dim is checked later).
        ScorerConfig(
            dim=1,
            hidden=self.hidden,
            attention_layers=self.attention_layers,
            attention_heads=self.attention_heads,
        )


# --- environment --------------------------------------------------------------------------------------


def env_config_for(cfg: TrainPolicyConfig) -> SlateEnvConfig:
    """The simulator this run trains in: ``--env-config`` (or the defaults), paths and shape from flags."""
    from rayrec.commands.simulate import env_config_for as simulator_config

    return simulator_config(
        cfg.env_config,
        index_dir=cfg.index,
        data_dir=cfg.data,
        num_candidates=cfg.num_candidates,
        slate_size=cfg.slate_size,
    )


def make_rllib_env(env_config: dict[str, Any]):
    """RLlib's env creator: the single env, or the native vector env when RLlib passes ``num_envs``."""
    from envs import make_env, make_vector_env

    fields = {k: v for k, v in dict(env_config).items() if k != "num_envs"}
    config = SlateEnvConfig(**fields)
    if "num_envs" in env_config:
        return make_vector_env(config, int(env_config["num_envs"]))
    return make_env(config)


def probe_env(env_config: SlateEnvConfig) -> tuple[int, int, int]:
    """Build the simulator once in the driver (clear errors before Ray starts): (dim, K, k)."""
    from envs import make_env

    env = make_env(env_config)
    try:
        space = env.observation_space
        return int(space["profile"].shape[-1]), int(space["candidates"].shape[0]), len(env.action_space.nvec)
    finally:
        env.close()


# --- RLlib wiring -------------------------------------------------------------------------------------


def session_metrics_callback():
    """An RLlibCallback that sums session returns, clicks and steps per iteration (``sim/*`` metrics)."""
    from ray.rllib.callbacks.callbacks import RLlibCallback

    class SessionMetrics(RLlibCallback):
        def on_episode_end(self, *, episode, prev_episode_chunks=None, metrics_logger=None, **kwargs) -> None:
            chunks = [*(prev_episode_chunks or []), episode]
            clicks = sum(bool(info.get("clicked", False)) for c in chunks for info in c.get_infos())
            # Sums, reset every iteration; iteration_metrics divides them into per-session means.
            metrics_logger.log_value("rayrec_return_sum", sum(c.get_return() for c in chunks), reduce="sum")
            metrics_logger.log_value("rayrec_clicks_sum", clicks, reduce="sum")
            metrics_logger.log_value("rayrec_steps_sum", sum(len(c) for c in chunks), reduce="sum")
            metrics_logger.log_value("rayrec_sessions_sum", 1, reduce="sum")

    return SessionMetrics


def build_algorithm_config(cfg: TrainPolicyConfig, env_config: SlateEnvConfig):
    """The PPOConfig: env creator, vector envs per runner, learners, PPO settings, the slate RLModule."""
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec
    from ray.tune.registry import register_env

    from trainers.slate_module import SlateRLModule

    register_env(RLLIB_ENV_NAME, make_rllib_env)
    return (
        PPOConfig()
        .environment(RLLIB_ENV_NAME, env_config=to_plain(env_config))
        .env_runners(
            num_env_runners=cfg.env_runners,
            num_envs_per_env_runner=cfg.envs_per_runner,
            gym_env_vectorize_mode="vector_entry_point",
            num_cpus_per_env_runner=1,
        )
        .learners(num_learners=cfg.learners, num_gpus_per_learner=cfg.gpus_per_learner)
        .training(
            lr=cfg.lr,
            gamma=cfg.gamma,
            lambda_=cfg.gae_lambda,
            entropy_coeff=cfg.entropy_coeff,
            clip_param=cfg.clip_param,
            use_kl_loss=cfg.kl_coeff > 0,
            kl_coeff=cfg.kl_coeff,
            vf_clip_param=cfg.vf_clip_param,
            train_batch_size_per_learner=math.ceil(cfg.train_batch_size / max(cfg.learners, 1)),
            minibatch_size=cfg.minibatch_size,
            num_epochs=cfg.num_epochs,
            grad_clip=1.0,
        )
        .rl_module(
            rl_module_spec=RLModuleSpec(
                module_class=SlateRLModule,
                model_config={
                    "hidden": cfg.hidden,
                    "attention_layers": cfg.attention_layers,
                    "attention_heads": cfg.attention_heads,
                    "entropy_samples": cfg.entropy_samples,
                },
            )
        )
        .callbacks(session_metrics_callback())
        .reporting(metrics_num_episodes_for_smoothing=1000)
        .debugging(seed=cfg.seed, log_level="ERROR")
    )


def iteration_metrics(result: dict[str, Any]) -> dict[str, float]:
    """Namespaced metrics of one ``algo.train()`` result: ``sim/*`` (this iteration's sessions), ``train/*``."""
    runners = result.get("env_runners", {})
    sessions = float(runners.get("rayrec_sessions_sum", 0.0))
    steps = float(runners.get("rayrec_steps_sum", 0.0))
    learner = result.get("learners", {}).get(MODULE_ID, {})
    nan = float("nan")
    out = {
        "sim/session_return": float(runners.get("rayrec_return_sum", nan)) / sessions if sessions else nan,
        "sim/ctr": float(runners.get("rayrec_clicks_sum", nan)) / steps if steps else nan,
        "sim/session_length": steps / sessions if sessions else nan,
        "sim/sessions": sessions,
        "train/env_steps": float(result.get("num_env_steps_sampled_lifetime", nan)),
    }
    for src, name in (
        ("policy_loss", "policy_loss"),
        ("vf_loss", "vf_loss"),
        ("entropy", "entropy"),
        ("mean_kl_loss", "kl"),
        ("vf_explained_var", "vf_explained_var"),
    ):
        out[f"train/{name}"] = float(learner.get(src, nan))
    return out


def current_scorer(algo) -> SlateScorer:
    """The scorer with the learner's latest weights (the env runners get them after every update)."""
    return algo.get_module(MODULE_ID).scorer


# --- run directory: binding, checkpoints, progress ------------------------------------------------------


def run_binding(env_config: SlateEnvConfig, scorer: ScorerConfig) -> dict[str, Any]:
    """What a checkpoint in this run directory is only valid for."""
    return {"env": to_plain(env_config), "scorer": dataclasses.asdict(scorer)}


def check_run_binding(out: str, binding: dict[str, Any], resume: bool) -> None:
    """Refuse to mix runs: resuming needs the same env and network; a fresh run needs an empty slate."""
    path = storage.join(out, RUN_FILE)
    if not storage.exists(path):
        if resume:
            raise ArtifactError(f"--resume: {out} holds no run to resume ({RUN_FILE} is missing)")
        return
    stored = json.loads(storage.read_text(path))
    if not resume:
        raise ConfigError(
            f"{out} already holds a training run: pass --resume to continue it, or another --out"
        )
    diffs = [
        f"{part}.{key}: checkpoint {stored.get(part, {}).get(key)!r} vs now {value!r}"
        for part in ("env", "scorer")
        for key, value in binding[part].items()
        if stored.get(part, {}).get(key) != value
    ]
    if diffs:
        raise ArtifactError(
            f"{out}: the checkpoint was trained with another configuration: " + "; ".join(diffs)
        )


@contextlib.contextmanager
def local_run_dir(cfg: TrainPolicyConfig) -> Iterator[Path]:
    """The run directory to work in: ``--out`` itself, or for a URI a local copy (holding the existing run when
    resuming) that is uploaded when the run ends."""
    with storage.local_output_dir(cfg.out) as out:
        if cfg.resume and storage.is_remote(cfg.out):
            with storage.local_input_dir(cfg.out) as existing:
                shutil.copytree(existing, out, dirs_exist_ok=True)
        yield out.absolute()


def upload_checkpoint(out: Path, uri: str, checkpoint: Path) -> None:
    """Copy a remote run's progress so far to ``uri``: everything but the checkpoints already there, so that a
    run that dies can ``--resume`` from the last one."""
    for child in out.iterdir():
        if child.is_file():
            storage.write_bytes(storage.join(uri, child.name), child.read_bytes())
        elif child.name != CHECKPOINT_DIR:
            storage.upload_dir(child, storage.join(uri, child.name))
    storage.upload_dir(checkpoint, storage.join(uri, CHECKPOINT_DIR, checkpoint.name))
    latest = checkpoint.parent / LATEST_FILE
    storage.write_bytes(storage.join(uri, CHECKPOINT_DIR, LATEST_FILE), latest.read_bytes())


def latest_checkpoint(out: Path) -> tuple[Path, int] | None:
    path = out / CHECKPOINT_DIR / LATEST_FILE
    if not path.exists():
        return None
    latest = json.loads(path.read_text())
    return out / CHECKPOINT_DIR / latest["path"], int(latest["iteration"])


def save_checkpoint(algo, out: Path, iteration: int) -> Path:
    name = f"iter_{iteration:05d}"
    path = out / CHECKPOINT_DIR / name
    algo.save_to_path(str(path))
    (out / CHECKPOINT_DIR / LATEST_FILE).write_text(json.dumps({"path": name, "iteration": iteration}) + "\n")
    return path


class ProgressLog:
    """One row per iteration to progress.jsonl, progress.csv and TensorBoard (rows past a resume point dropped)."""

    def __init__(self, out: Path, start_iteration: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.out = out
        self.rows: list[dict[str, float]] = []
        jsonl = out / PROGRESS_JSONL
        if jsonl.exists():
            rows = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
            self.rows = [r for r in rows if r["iteration"] <= start_iteration]
        self.writer = SummaryWriter(log_dir=str(out / "tensorboard"), purge_step=start_iteration + 1)
        self._rewrite()

    def add(self, row: dict[str, float]) -> None:
        self.rows.append(row)
        for key, value in row.items():
            if key != "iteration" and isinstance(value, float) and math.isfinite(value):
                self.writer.add_scalar(key, value, global_step=int(row["iteration"]))
        self.writer.flush()
        self._rewrite()

    def _rewrite(self) -> None:
        (self.out / PROGRESS_JSONL).write_text("".join(json.dumps(r) + "\n" for r in self.rows))
        keys = sorted({k for r in self.rows for k in r}, key=lambda k: (k != "iteration", k))
        with open(self.out / PROGRESS_CSV, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=keys)
            writer.writeheader()
            writer.writerows(self.rows)

    def close(self) -> None:
        self.writer.close()


def progress_line(row: dict[str, float], total: int) -> str:
    val = row.get("eval/session_return")
    extra = f"  eval/session_return {val:.3f}" if val is not None else ""
    return (
        f"iter {int(row['iteration']):>3}/{total}  steps {int(row['train/env_steps']):>8}  "
        f"sim/session_return {row['sim/session_return']:.3f}  sim/ctr {row['sim/ctr']:.3f}  "
        f"sim/session_length {row['sim/session_length']:.2f}  train/entropy {row['train/entropy']:.2f}  "
        f"train/kl {row['train/kl']:.4f}{extra}  {row['train/wall_s']:.0f}s"
    )


# --- the run ------------------------------------------------------------------------------------------


def train(cfg: TrainPolicyConfig) -> dict[str, Any]:
    """Train, checkpoint, export and evaluate; returns the evaluation summary (also in ``eval.json``)."""
    from rayrec.runtime import init_ray
    from rayrec.slate_model import ExportConfig, ScorerConfig, save_exported_policy
    from trainers.policy_eval import evaluate_policies, validation_return, write_evaluation

    env_config = env_config_for(cfg)
    dim, num_candidates, slate_size = probe_env(env_config)
    scorer_config = ScorerConfig(
        dim=dim, hidden=cfg.hidden, attention_layers=cfg.attention_layers, attention_heads=cfg.attention_heads
    )
    binding = run_binding(env_config, scorer_config)
    check_run_binding(cfg.out, binding, cfg.resume)
    with local_run_dir(cfg) as out:
        save_config(cfg, out)
        (out / RUN_FILE).write_text(json.dumps(binding, indent=2) + "\n")

        import torch

        torch.set_num_threads(cfg.torch_threads)
        init_ray(cfg.address)
        algo = build_algorithm_config(cfg, env_config).build_algo()
        policy_dir = str(out / POLICY_DIR)

        def export(iteration: int, validation: float | None) -> None:
            config = ExportConfig(
                scorer=scorer_config,
                slate_size=slate_size,
                num_candidates=num_candidates,
                name=cfg.policy_name,
                metadata={
                    "trainer": "rllib-ppo",
                    "iteration": iteration,
                    "validation_return": validation,
                    "seed": cfg.seed,
                    "env": to_plain(env_config),
                },
            )
            save_exported_policy(current_scorer(algo), config, policy_dir)

        try:
            start, best = 0, float("-inf")
            if cfg.resume:
                found = latest_checkpoint(out)
                if found is None:
                    raise ArtifactError(f"--resume: no checkpoint under {out / CHECKPOINT_DIR}")
                algo.restore_from_path(str(found[0]))
                start, best = found[1], exported_validation_return(policy_dir)
                print(f"resumed from {found[0]} (iteration {start})", flush=True)
            progress = ProgressLog(out, start)
            started = time.perf_counter() - (progress.rows[-1]["train/wall_s"] if progress.rows else 0.0)
            for iteration in range(start + 1, cfg.iterations + 1):
                row = {"iteration": float(iteration), **iteration_metrics(algo.train())}
                if cfg.validate_every and (
                    iteration % cfg.validate_every == 0 or iteration == cfg.iterations
                ):
                    value = validation_return(
                        current_scorer(algo), env_config, cfg.validate_users, cfg.eval_seed + 1
                    )
                    row["eval/session_return"] = value
                    if cfg.export == "best" and value > best:
                        best = value
                        export(iteration, value)
                row["train/wall_s"] = time.perf_counter() - started
                progress.add(row)
                print(progress_line(row, cfg.iterations), flush=True)
                if (
                    cfg.checkpoint_every and iteration % cfg.checkpoint_every == 0
                ) or iteration == cfg.iterations:
                    checkpoint = save_checkpoint(algo, out, iteration)
                    if storage.is_remote(cfg.out):
                        upload_checkpoint(out, cfg.out, checkpoint)
            progress.close()
            if cfg.export == "last" or not math.isfinite(best):
                export(cfg.iterations, None)
            print(f"exported policy → {storage.join(cfg.out, POLICY_DIR)}", flush=True)
        finally:
            algo.stop()

        summary = evaluate_policies(
            policy_dir, env_config, cfg.baselines, cfg.eval_users, cfg.eval_seed, cfg.policy_name
        )
        write_evaluation(
            summary, out, progress.rows, command=" ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
        )
        return summary


def exported_validation_return(policy_dir: str) -> float:
    """The validation return recorded with the current export (-inf when there is none)."""
    meta_path = Path(policy_dir) / "policy.json"
    if not meta_path.exists():
        return float("-inf")
    value = json.loads(meta_path.read_text()).get("metadata", {}).get("validation_return")
    return float(value) if value is not None else float("-inf")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trainers.policy",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_args(parser, TrainPolicyConfig)
    return parser


def run_from_args(args: argparse.Namespace) -> int:
    summary = train(config_from_args(TrainPolicyConfig, args))
    print(summary["markdown"])
    return 0


def main(argv: list[str] | None = None) -> int:
    from rayrec.errors import RayrecError

    args = build_parser().parse_args(argv)
    try:
        return run_from_args(args)
    except RayrecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
