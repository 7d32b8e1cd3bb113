"""Typed configs of ``rayrec ab``, ``rayrec ab plan`` and ``rayrec ope`` (field docstrings are ``--help``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from envs.spec import SimulatorOptions
from rayrec.assignment import DEFAULT_SALT
from rayrec.config import RayConfig
from rayrec.errors import ConfigError


def _check_level(name: str, value: float) -> None:
    if not 0.0 < value < 1.0:
        raise ConfigError(f"--{name} must be in (0, 1), got {value}")


@dataclass(kw_only=True)
class AbConfig(SimulatorOptions):
    """``rayrec ab``: a simulated A/B test, in-process on Ray or against a running server (``--url``).

    The simulator options (``--index``, ``--data``, ``--env-config``, ...) are the same as every simulating
    command's; with ``--url``, ``--index`` is required and must be the server's index.
    """

    arm: list[str] = field(default_factory=list)
    """An arm as NAME=POLICY[:WEIGHT]; repeat for every arm (at least two). POLICY: random, retrieval,
    greedy, oracle or a trained policy directory. With --url the arms are the server's (optional here;
    when given they must match it)."""
    out: str | None = None
    """Output directory: report.json, report.md, PNG plots, users.parquet and the event log (events/)."""
    users: int = 2000
    """Simulated users in all (each lives one whole session)."""
    url: str | None = None
    """Base URL of a running `rayrec serve`; simulated users call its /recommend and /feedback."""
    control: str | None = None
    """Name of the control arm (default: the first --arm, or the server's first arm)."""
    seed: int = 0
    """Seed of the simulated population and of every random choice."""
    salt: str = DEFAULT_SALT
    """Salt of the arm-assignment hash (the server's default unless it was changed)."""
    method: Literal["auto", "welch", "bootstrap"] = "auto"
    """Test per metric: welch, bootstrap (studentized), or auto (bootstrap when a metric is skewed)."""
    alpha: float = 0.05
    """Significance level; intervals are (1 - alpha)."""
    resamples: int = 2000
    """Bootstrap resamples."""
    sequential: bool = True
    """Also report always-valid (mSPRT) p-values, which stay valid under continuous peeking."""
    tau_sd: float = 0.1
    """mSPRT mixing standard deviation, in units of the metric's pooled per-user standard deviation."""
    users_per_task: int = 2000
    """Users per Ray task (shard) in-process."""
    slots: int = 512
    """Users simulated at once within a task (vector env rows)."""
    concurrency: int = 8
    """Simulated users calling the server at once (--url)."""
    api_key: str | None = None
    """Bearer key (scopes recommend and feedback) for a server started with --api-keys (--url); else the
    RAYREC_API_KEY environment variable."""
    progress: bool = True
    """Show progress bars."""
    primary: str = "session_return"
    """The metric a treatment must win on (its interval excludes 0 on the better side) to ship."""
    guardrail: list[str] = field(default_factory=list)
    """A guardrail as METRIC:TOLERANCE (repeatable), e.g. sim/coverage:0.05: the treatment ships only if
    the interval of its lift shows it at most TOLERANCE x the control mean worse (see rayrec.ab.guardrails)."""

    def __post_init__(self) -> None:
        if self.users < 1:
            raise ConfigError(f"--users must be >= 1, got {self.users}")
        from rayrec.ab.guardrails import parse_guardrail  # guardrails imports the analysis: kept lazy

        for spec in self.guardrail:
            parse_guardrail(spec)
        _check_level("alpha", self.alpha)
        if self.resamples < 100:
            raise ConfigError(f"--resamples must be >= 100, got {self.resamples}")
        if not self.tau_sd > 0:
            raise ConfigError(f"--tau-sd must be > 0, got {self.tau_sd}")
        for name in ("users_per_task", "slots", "concurrency"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")


@dataclass(kw_only=True)
class AbPlanConfig(RayConfig):
    """``rayrec ab plan``: users per arm to detect a minimum effect with a given power."""

    mde: float
    """Minimum detectable effect: absolute in metric units, or relative with --relative (0.05 = +5%)."""
    relative: bool = False
    """Read --mde as a fraction of the baseline mean."""
    baseline_mean: float | None = None
    """Baseline (control) mean of the metric; needed for a relative MDE unless --pilot gives it."""
    baseline_sd: float | None = None
    """Per-user standard deviation of the metric; else measured on --pilot."""
    pilot: str | None = None
    """A `rayrec ab` output directory whose control arm gives the baseline mean and sd."""
    metric: str = "session_return"
    """Metric read from --pilot: session_return, clicks, ctr or session_length."""
    alpha: float = 0.05
    """Two-sided significance level."""
    power: float = 0.8
    """Probability of detecting an effect of exactly --mde."""
    arms: int = 2
    """Arms sharing traffic equally (control plus treatments)."""
    json: str | None = None
    """Write the plan as JSON to this file."""

    def __post_init__(self) -> None:
        _check_level("alpha", self.alpha)
        _check_level("power", self.power)
        if self.pilot is None and self.baseline_sd is None:
            raise ConfigError("give --baseline-sd (and --baseline-mean for a relative MDE) or --pilot DIR")


@dataclass(kw_only=True)
class OpeConfig(RayConfig):
    """``rayrec ope``: off-policy estimates of a target policy's value from a logged event log.

    Every logged request is re-scored by every logging policy (the log's ``policy`` names, built like the
    target), so a log that mixes a randomised arm with deterministic ones is weighted by the mixture.
    Item-level estimators value a request; session-level ones a user's whole logged episode.
    """

    events: str
    """Event-log directory (requests, impressions, feedback): a server's --events or an A/B run's DIR/events."""
    target: str
    """Policy to evaluate: random, retrieval, greedy or a trained policy directory."""
    index: str | None = None
    """Item index the log was written with (candidate embeddings); default: the simulator recorded in
    EVENTS/simulator.yaml by `rayrec ab`."""
    logger: list[str] = field(default_factory=list)
    """How to rebuild a logging policy the log names, as NAME=POLICY (repeat per policy); a logged name
    without one is built as a policy of that name (random, retrieval, greedy)."""
    clip: float | None = None
    """Also report IPS and DR with importance weights clipped at this value, with the bound on the bias
    that clipping causes (their intervals are widened by it)."""
    json: str | None = None
    """Write the estimates as JSON to this file."""
    alpha: float = 0.05
    """Intervals are (1 - alpha)."""
    resamples: int = 1000
    """Bootstrap resamples (users are resampled)."""
    seed: int = 0
    """Seed of the bootstrap and of the slates drawn from a randomised target."""

    def __post_init__(self) -> None:
        _check_level("alpha", self.alpha)
        if self.resamples < 100:
            raise ConfigError(f"--resamples must be >= 100, got {self.resamples}")
        if self.clip is not None and not self.clip > 0:
            raise ConfigError(f"--clip must be > 0, got {self.clip}")
