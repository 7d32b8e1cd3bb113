"""``rayrec loop``: the closed loop from a live server back to a better policy on it, in one command.

    rayrec loop --index runs/index --out runs/loop --incumbent greedy --users 2000 --ab-users 4000

1. **serve** the index with two arms, ``main`` (``--incumbent``) and ``explore`` (``epsilon-greedy``,
   ``--explore-share`` of the users), as a ``serve deploy`` document (``OUT/serve.yaml``) applied to
   Ray Serve — the server logs requests, impressions and feedback to ``OUT/events``;
2. **collect**: ``--users`` simulated users (the index's world) call ``/recommend`` and ``/feedback``;
3. **train offline** on the server's log (``rayrec train-policy --from-events``, ``--offline-algo``);
4. **OPE** of the candidates (``--candidate`` policies, the trained one) on the same log
   (``rayrec ope``'s estimates; ``OUT/ope.json``); the one whose per-user ``sdr`` estimate has the highest
   lower 95% bound is the challenger (:func:`pick_challenger`);
5. **simulated A/B** of the incumbent against the challenger on ``--ab-users`` simulated users
   (``rayrec ab``; ``OUT/ab``);
6. **roll out** the winner — the challenger when its session-return lift's interval is above 0, else the
   incumbent — by changing the ``main`` ranker's ``user_config`` and applying the document again
   (``OUT/serve-rollout.yaml``; the replicas load the new policy and swap it in while serving), then
   check that the server answers with it.

``OUT/loop.json`` records every step's result. The server is deleted at the end unless ``--keep-serving``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from envs.spec import SimulatorOptions
from rayrec.cli import add_command
from rayrec.config import add_config_args, config_from_args
from rayrec.errors import ConfigError

APP = "rayrec-loop"
MAIN_ARM = "main"
EXPLORE_ARM = "explore"


def pick_challenger(estimates: dict[str, dict], incumbent: str) -> str:
    """The candidate (any policy but ``incumbent``) whose OPE interval has the highest lower bound.

    Choosing by the point estimate is a winner's curse: among several candidates the one whose estimate
    came out highest is, more often than not, one whose estimate is noisy and too high (an offline-trained
    policy far from the logging policy has the widest intervals). The lower confidence bound is the
    pessimistic choice of high-confidence policy improvement (Thomas, Theocharous and Ghavamzadeh, ICML
    2015); the A/B test that follows decides whether it ships. Ties go to the higher estimate.

    Args:
        estimates: policy spec → an estimate with ``value`` and ``ci95`` ([low, high]), as ``rayrec ope``
            writes it; a bound that is not finite counts as the lowest.

    Raises:
        ConfigError: no candidate besides the incumbent.
    """
    candidates = [spec for spec in estimates if spec != incumbent]
    if not candidates:
        raise ConfigError(f"no candidate to challenge the incumbent {incumbent!r}: add --candidate")

    def pessimistic(spec: str) -> tuple[float, float]:
        low = float(estimates[spec]["ci95"][0])
        return (low if math.isfinite(low) else -math.inf, float(estimates[spec]["value"]))

    return max(candidates, key=pessimistic)


@dataclass(kw_only=True)
class LoopConfig(SimulatorOptions):
    """``rayrec loop``: serve with an exploration arm, learn from the log, test, roll out the winner.

    The simulator options describe the simulated users' world; ``--index`` (required) is also what the
    server serves, and ``--num-candidates`` (default 20) the K it retrieves.
    """

    def __post_init__(self) -> None:
        if self.index is None:
            raise ConfigError("rayrec loop needs --index: the item index the server serves")
        if self.num_candidates is None:
            self.num_candidates = 20
        if not 0 < self.explore_share < 1:
            raise ConfigError(f"--explore-share must be in (0, 1), got {self.explore_share}")

    out: str
    """Run directory: serve.yaml, serve-rollout.yaml, events/, train/, ope.json, ab/, loop.json."""
    incumbent: str = "greedy"
    """Policy of the ``main`` arm before the loop (a baseline name or an exported policy directory)."""
    explore_share: float = 0.3
    """Share of the users in the ``explore`` arm (``epsilon-greedy``) while the log is collected."""
    users: int = 1000
    """Simulated users who call the server while the log is collected (one session each)."""
    candidate: list[str] = field(default_factory=lambda: ["retrieval"])
    """Policies the OPE step ranks beside the one trained from the log (repeatable)."""
    offline_algo: str = "reinforce-topk"
    """Offline method (``rayrec train-policy --offline-algo``): bc, marwil or reinforce-topk."""
    iterations: int = 300
    """Offline training iterations."""
    ab_users: int = 2000
    """Simulated users of the A/B test of incumbent against challenger."""
    host: str = "127.0.0.1"
    """Address the server binds (loopback: no API keys needed)."""
    port: int = 8000
    """HTTP port of the server (where Ray Serve already runs here, its own port)."""
    route_prefix: str = "/"
    """Route of the application (another prefix lets it run beside another app on the same Serve)."""
    concurrency: int = 4
    """Simulated users calling the server at once."""
    seed: int = 0
    """Seed of the simulated users, the training and the A/B test."""
    keep_serving: bool = False
    """Leave the server running (with the winner) when the loop ends."""


def deploy_document(cfg: LoopConfig, main_policy: str) -> dict[str, Any]:
    """The ``serve deploy`` document of the server with ``main_policy`` on the main arm.

    The ingress runs the stages itself (``colocate``), so the arms' policies are its ``user_config``: a
    document that changes only them is a rollout that reloads no replica.
    """
    out = Path(cfg.out).absolute()
    share = cfg.explore_share
    arms = [f"{MAIN_ARM}={cfg.incumbent}:{1 - share:g}", f"{EXPLORE_ARM}=epsilon-greedy:{share:g}"]
    index = str(Path(cfg.index).absolute())
    return {
        "proxy_location": "HeadOnly",
        "http_options": {"host": cfg.host, "port": cfg.port},
        "applications": [
            {
                "name": APP,
                "route_prefix": cfg.route_prefix,
                "import_path": "serving.app:build_app",
                "args": {
                    "index": index,
                    "arms": arms,
                    "events": str(out / "events"),
                    "encoder": "none",
                    "colocate": True,
                    "num_candidates": cfg.num_candidates,
                    "flush_seconds": 0.5,
                    "pseudonym_key": str(out / "secrets" / "pseudonym.key"),
                },
                "deployments": [
                    {
                        "name": "Recommender",
                        "user_config": {
                            "index": index,
                            "policies": {MAIN_ARM: main_policy, EXPLORE_ARM: "epsilon-greedy"},
                        },
                    }
                ],
            }
        ],
    }


def apply_document(document: dict[str, Any], path: Path) -> int:
    """Write ``document`` to ``path`` and apply it to Ray Serve as ``serve deploy`` does (the controller's
    declarative config), waiting until the application runs; returns the HTTP port Serve listens on."""
    import yaml
    from ray.serve._private import api as serve_api
    from ray.serve.schema import ServeDeploySchema

    path.write_text(yaml.safe_dump(document, sort_keys=False))
    schema = ServeDeploySchema.model_validate(document)
    client = serve_api.serve_start(http_options=schema.http_options.model_dump())
    client.deploy_apps(schema, _blocking=True)
    return int(client.http_config.port)


def wait_healthy(url: str, timeout_s: float = 300.0) -> None:
    import httpx

    from rayrec.errors import RayrecError

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=10).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RayrecError(f"{url}: the server did not become healthy within {timeout_s:.0f}s")


def served_policy(url: str, user: str, history: list[str]) -> tuple[str, str]:
    """(arm, policy name) of the answer to a ``/recommend`` for ``user`` with ``history``."""
    import httpx

    body = {"user_id": user, "history": history, "k": 3}
    answer = httpx.post(f"{url}/recommend", json=body, timeout=30).json()
    return answer["arm"], answer["policy"]


def wait_rolled_out(
    url: str, users: list[str], history: list[str], name: str, timeout_s: float = 120.0
) -> None:
    """Until the main arm answers with policy ``name`` (the rollout swaps it in while serving)."""
    from rayrec.errors import RayrecError

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for user in users:
            arm, policy = served_policy(url, user, history)
            if arm == MAIN_ARM and policy == name:
                return
        time.sleep(0.5)
    raise RayrecError(f"{url}: the main arm does not serve {name!r} {timeout_s:.0f}s after the rollout")


def run_loop(cfg: LoopConfig) -> dict[str, Any]:
    """The six steps (module docstring); returns what ``OUT/loop.json`` holds."""
    from ray import serve

    from envs.spec import resolve_env_config
    from rayrec.ab.config import AbConfig, OpeConfig
    from rayrec.ab.experiment import run_experiment
    from rayrec.ab.http_client import run_http_ab
    from rayrec.ab.offline import evaluate_offline
    from rayrec.ab.simulate import simulated_user_ids
    from rayrec.assignment import assign_arm
    from rayrec.index import ItemIndex
    from rayrec.rerank import load_policy_for_index
    from rayrec.runtime import init_ray
    from trainers.offline import train_offline
    from trainers.policy_config import TrainPolicyConfig

    out = Path(cfg.out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    env_config = resolve_env_config(cfg, user_split="train")
    summary: dict[str, Any] = {"incumbent": cfg.incumbent}
    init_ray(cfg.address, log_dir=out, verbose=cfg.verbose)
    try:
        started = time.perf_counter()
        port = apply_document(deploy_document(cfg, cfg.incumbent), out / "serve.yaml")
        url = f"http://{cfg.host}:{port}{cfg.route_prefix.rstrip('/')}"
        summary["url"] = url
        wait_healthy(url)
        summary["serve_s"] = round(time.perf_counter() - started, 1)
        print(f"1. serving {url}: {MAIN_ARM}={cfg.incumbent}, {EXPLORE_ARM}=epsilon-greedy", flush=True)

        users = simulated_user_ids(cfg.users, cfg.seed)
        run_http_ab(
            url, env_config, users, events_dir=str(out / "client-events"), seed=cfg.seed,
            concurrency=cfg.concurrency, progress=False,
        )  # fmt: skip
        time.sleep(2.0)  # the server writes its queued request rows every flush_seconds
        summary["collected_users"] = len(users)
        print(f"2. collected {len(users)} users' sessions → {out / 'events'}", flush=True)

        world = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(SimulatorOptions)}
        train = TrainPolicyConfig(
            **world,
            out=str(out / "train"),
            from_events=str(out / "events"),
            offline_algo=cfg.offline_algo,
            iterations=cfg.iterations,
            train_batch_size=256,
            minibatch_size=256,
            lr=1e-3,
            validate_every=0,
            eval_users=0,
            seed=cfg.seed,
        )
        trained = train_offline(train)["policy_dir"]
        print(f"3. trained {cfg.offline_algo} from the log → {trained}", flush=True)

        ope = {}
        for spec in dict.fromkeys([cfg.incumbent, *cfg.candidate, trained]):
            result = evaluate_offline(
                OpeConfig(events=str(out / "events"), index=cfg.index, target=spec, resamples=200)
            )
            ope[spec] = result
            session = result["session_estimators"]["sdr"]
            print(f"4. OPE {spec}: sdr {session['value']:.3f} ci95 {session['ci95']}", flush=True)
        (out / "ope.json").write_text(json.dumps(ope, indent=2, default=str) + "\n")
        challenger = pick_challenger({s: ope[s]["session_estimators"]["sdr"] for s in ope}, cfg.incumbent)
        summary["ope"] = {s: ope[s]["session_estimators"]["sdr"] for s in ope}
        summary["challenger"] = challenger

        analysis = run_experiment(
            AbConfig(
                **world,
                arm=[f"incumbent={cfg.incumbent}", f"challenger={challenger}"],
                users=cfg.ab_users,
                out=str(out / "ab"),
                seed=cfg.seed + 1,
                progress=False,
            )
        )
        lift = analysis.comparison("session_return", "challenger")
        wins = lift.ci95[0] > 0
        winner = challenger if wins else cfg.incumbent
        summary["ab"] = {"lift": lift.lift, "ci95": list(lift.ci95), "challenger_wins": wins}
        print(
            f"5. A/B challenger − incumbent: {lift.lift:+.3f} ci95 {lift.ci95} → winner {winner}", flush=True
        )

        apply_document(deploy_document(cfg, winner), out / "serve-rollout.yaml")
        probes = [
            u for u in (f"probe-{i}" for i in range(200)) if assign_arm(u, arm_weights(cfg)) == MAIN_ARM
        ]
        history = [str(item) for item in ItemIndex.load(cfg.index).item_ids[:2]]
        wait_rolled_out(url, probes[:5], history, load_policy_for_index(winner, cfg.index).name)
        summary["winner"] = winner
        print(f"6. rolled out {winner} on the {MAIN_ARM} arm (serve-rollout.yaml)", flush=True)
    finally:
        if not cfg.keep_serving:
            serve.delete(APP)
    (out / "loop.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary


def arm_weights(cfg: LoopConfig) -> list[tuple[str, float]]:
    return [(MAIN_ARM, 1 - cfg.explore_share), (EXPLORE_ARM, cfg.explore_share)]


def _run(args: argparse.Namespace) -> int:
    run_loop(config_from_args(LoopConfig, args))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers,
        "loop",
        _run,
        help="the closed loop: serve with an exploration arm, learn offline from the log, OPE, A/B, roll out",
    )
    add_config_args(parser, LoopConfig)
