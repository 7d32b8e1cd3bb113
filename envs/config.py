"""The one typed configuration of the slate simulator (every part reads its fields from here)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from rayrec.errors import ConfigError
from rayrec.features import feature_names, hidden_feature_selection

REWARD_NAMES = ("clicks", "engagement", "return", "watch")
USER_SPLITS = ("all", "train", "validation", "test")
SPLIT_FRACTIONS = {"train": 0.7, "validation": 0.1, "test": 0.2}
"""Shares of logged users in each split (by a hash of the user's position in the logs, so stable)."""
CANDIDATE_MODES = ("faiss", "faiss-diverse", "random")


@dataclass(kw_only=True)
class SlateEnvConfig:
    """Everything that defines a ``rayrec/SlateRec-v0`` simulator: catalog, users, choice model, dynamics.

    Utilities are in cosine units (the scale of ``interest · embedding``); the choice model divides them
    by ``temperature``. Validation of values that do not depend on the catalog happens here, at
    construction; values that do (``num_candidates`` against the catalog size, the index's dimension)
    are checked when the simulator is built.
    """

    # --- catalog -------------------------------------------------------------------------------------
    index_dir: str | None = None
    """Item index directory (``rayrec build-index``); None → the built-in synthetic catalog."""
    data_dir: str | None = None
    """Data directory with ``items.parquet``/``interactions.parquet``: starts users from real histories
    and supplies item ``clickbait``/``quality`` (columns, else derived from the logs)."""
    num_items: int = 5000
    """Items in the built-in synthetic catalog (ignored with ``index_dir``)."""
    num_topics: int = 16
    """Topics of the built-in synthetic world."""
    dim: int | None = None
    """Embedding dimension: of the built-in synthetic world (None → 32); with ``index_dir`` it must equal
    the index's (None → take the index's)."""
    clickbait_rate: float = 0.2
    """Fraction of clickbait items in the built-in synthetic world."""
    world_seed: int = 0
    """Seed of the built-in synthetic world (catalog and topic centroids; users come from the env seed)."""

    # --- candidates and slate ------------------------------------------------------------------------
    num_candidates: int = 20
    """K: candidates retrieved per step (the observation's candidate axis)."""
    slate_size: int = 5
    """k: items shown per step (the action is k distinct candidate positions)."""
    candidates: Literal["faiss", "faiss-diverse", "random"] = "faiss"
    """``faiss``: the K nearest unseen items to the user's observed profile; ``faiss-diverse``: the same
    with at most ``category_quota`` items from any one category (a diversifying retrieval stage);
    ``random``: K distinct items drawn uniformly each step (RecSim's sampler), for ablations and for
    measuring the simulator alone."""
    category_quota: int = 4
    """``faiss-diverse`` only: the most candidates one item category may contribute to the K."""
    retrieval_shortlist: bool = False
    """``faiss`` over the simulator's own catalog only: after a click, take the user's K candidates from the
    items kept at the last search wherever that is certified to find the same K, and search only where it
    is not (:mod:`envs.shortlist`; ``python -m benchmarks.env`` measures the speed-up). The K items are the
    ones a search finds; within them, items whose scores agree to ~1e-6 may swap places, and scores differ
    in the last float bits, so a run is statistically the same as without it but not digit for digit. Off
    by default so that the figures published with earlier commands reproduce digit for digit."""

    # --- users ---------------------------------------------------------------------------------------
    history_length: int = 5
    """Items a synthetic user has consumed before the session (their observed profile at reset); with
    logs, at most this many of the user's most recent items."""
    history_pool: int = 256
    """A synthetic user's history is the ``history_length`` best-matching items of this many uniformly
    drawn ones (cheap, index-free, interest-correlated)."""
    interest_noise: float = 0.3
    """Std of the Gaussian noise added (per dimension, times 1/sqrt(dim)) to a user's interest when
    sampling it from a topic mixture or from a logged history."""
    budget: float = 20.0
    """Session time budget in steps; each step spends one. Also the observation's budget scale."""
    initial_satisfaction: tuple[float, float] = (0.8, 1.0)
    """Range a user's starting satisfaction is drawn from uniformly (satisfaction lives in [0, 1])."""
    user_split: Literal["all", "train", "validation", "test"] = "all"
    """Which logged users start sessions (data mode): ``train`` (70%), ``validation`` (10%), ``test`` (20%)
    of the users, split by a stable hash, or ``all``. Training uses train, model selection validation, and
    every evaluation and A/B test users only. Without logs users are drawn fresh (seeds keep them apart)."""

    # --- choice model --------------------------------------------------------------------------------
    temperature: float = 0.1
    """Conditional-logit temperature: lower → choices follow utility more sharply."""
    no_click_utility: float = 1.0
    """Utility of not clicking (the outside option), in cosine units."""
    position_decay: float = 0.85
    """Attractiveness multiplier per slate position (position p is weighted ``position_decay ** p``)."""
    clickbait_appeal: float = 0.3
    """Extra utility of a clickbait item: it is clicked more than its relevance warrants."""
    popularity_appeal: float = 0.1
    """Extra utility per unit of the popularity feature (broad appeal of popular items)."""

    # --- response ------------------------------------------------------------------------------------
    interest_drift: float = 0.1
    """After a click the hidden interest moves this fraction of the way toward the clicked item."""
    satisfaction_gain: float = 0.2
    """Satisfaction change per click per unit of ``quality - 0.5`` (good items raise it)."""
    clickbait_penalty: float = 0.2
    """Satisfaction lost when the clicked item is clickbait."""
    boredom: float = 0.03
    """Satisfaction lost on a step without a click."""
    leave_base: float = 0.0
    """Probability per step that a fully satisfied user leaves."""
    leave_scale: float = 0.5
    """Extra leave probability per unit of dissatisfaction: ``p = leave_base + leave_scale * (1 - s)**2``."""

    # --- satiation (RecSim's interest evolution) -------------------------------------------------------
    satiation_gain: float = 0.0
    """How much a click adds to the user's satiation vector (``σ ← σ + gain * e_clicked``); 0 turns it off."""
    satiation_recovery: float = 0.0
    """Fraction of satiation that fades each step (``σ ← (1 - recovery) σ``), and per day between sessions."""
    satiation_penalty: float = 0.0
    """Utility lost per unit of satiation toward an item: ``u_i -= penalty * max(0, e_i · σ)``."""

    # --- clickbait tolerance ------------------------------------------------------------------------
    clickbait_fatigue: float = 0.0
    """How clickbait's harm grows with recent clickbait: the satisfaction lost on a clickbait click is
    ``clickbait_penalty * (1 + clickbait_fatigue * f)`` where ``f`` counts recent clickbait clicks (0: the harm
    is constant, as in the classic world)."""
    fatigue_recovery: float = 0.2
    """Fraction of the clickbait count ``f`` that fades each step (and per day between sessions)."""

    # --- sessions, leaving and returning (KuaiSim's retention) ----------------------------------------
    sessions: int = 1
    """Sessions per simulated user (an episode is the user's sessions up to this many; 1: one session)."""
    return_bias: float = 1.0
    """Log-odds of returning for another session at satisfaction 0.5."""
    return_slope: float = 4.0
    """Extra log-odds of returning per unit of end-of-session satisfaction above 0.5."""
    return_delay: float = 3.0
    """Mean days until a returning user comes back, at satisfaction 0 (halved at satisfaction 1); the delay
    is ``1 + Poisson(return_delay * (1 - s / 2) - 1)`` days."""
    satisfaction_recovery: float = 0.5
    """Fraction of the gap to the starting satisfaction a returning user recovers between sessions."""

    # --- reward ------------------------------------------------------------------------------------
    reward: Literal["clicks", "engagement", "return", "watch"] = "clicks"
    """``clicks``: 1 per click; ``engagement``: the clicked item's quality (quality-weighted engagement);
    ``return``: ``1 / days`` when the user comes back for another session ``days`` later (0 otherwise);
    ``watch``: time watched, the user's satisfaction times ``1 + clickbait_watch * c_i`` (engagement that
    scales with satisfaction, RecSim's long-term satisfaction world)."""
    clickbait_watch: float = 0.0
    """``watch`` reward only: how much longer a clickbait click is watched than another, as a multiple
    (``1 + clickbait_watch``): clickbait pays now and costs satisfaction, which every later click is worth."""
    diversity_weight: float = 0.0
    """Added to every step's reward: this times the intra-list diversity of the slate shown (mean pairwise
    cosine distance of its items, :func:`rayrec.metrics.beyond.intra_list_diversity`); 0 leaves the reward
    as it is. A policy trained with it learns to trade the reward for varied slates."""

    # --- observation -------------------------------------------------------------------------------
    observe_rating: bool = False
    """Append :data:`rayrec.features.ITEM_RATING` to every candidate's features: the item's mean logged
    rating, scaled and shrunk by :func:`rayrec.features.rating_feature`. The ratings come from the data's
    ``interactions.parquet`` (``data_dir``), an index built from rated data (``index_dir`` alone), or for the
    built-in world its own log of ``rating_log_users`` users (:func:`rayrec.synth.behaviour.logged_ratings`).
    Any catalog with ratings has this signal; the server builds it over an index that stores it."""
    observe_feedback: bool = False
    """Append :data:`rayrec.features.LAST_ENGAGEMENT` to every candidate's features: the fraction of its length
    the user watched of the last item they clicked (their satisfaction when they clicked it; watch time is
    that times the item's length, ``1 + clickbait_watch * c``), 0 before their first click; it carries over
    to the user's next session. Completion rate is engagement feedback every video service logs; it tells a
    policy how satisfied the user is, one click late and without noise. Without it no observation says how
    satisfied the user is (``python -m benchmarks.presets`` shows what a rule that knows the items and only
    the session's clock can do)."""
    observe_last_click: bool = False
    """Append :data:`rayrec.features.LAST_CLICK_RATING` after ``last_engagement``: the ``item_rating`` of the
    last item the user clicked (0 before their first click; needs ``observe_rating``, whose ratings it reads).
    The completion rate says the user's satisfaction when they clicked; what the item then did to it depends
    on the item, and its logged rating is the observable estimate of that. The two together let a policy
    estimate the satisfaction now, not one click late."""
    observe_item_log: bool = False
    """Append :data:`rayrec.features.ITEM_LOG_FEATURES` after the session feedback: each candidate's
    click-through rate and mean watch time per click (``satisfaction * (1 + clickbait_watch * c)``, whatever
    the reward) in a log of ``item_log_users`` training users of this world shown uniformly random slates
    of their candidates, shrunk by :func:`rayrec.features.shrunk_mean`. Services aggregate both per item
    from their exploration traffic; they say what draws clicks beyond interest (clickbait) and what holds
    attention, with the noise of a finite log and the bias of who clicks what."""
    observe_lift: bool = False
    """Append :data:`rayrec.features.LIFT_FEATURES` after the item-log columns: each candidate's ``item_lift``,
    the mean change in a user's completion rate from a click on it to their next click in the same
    exploration log (shrunk toward what its logged click-through rate and watch time predict), and the
    user's ``satisfaction_estimate``, their last completion rate plus the lift of the item that click was on
    (0 before their first click). The completion rate reads the satisfaction one click late; the lift of
    what was clicked brings it up to now (``python -m benchmarks.state_estimate`` measures how well)."""
    item_log_users: int = 10_000
    """Users in the exploration log that ``observe_item_log`` and ``observe_lift`` read; fewer users, fewer
    impressions and clicks per item and noisier estimates."""
    rating_log_users: int = 10_000
    """Users in the built-in world's log that ``observe_rating`` reads (about 6 ratings each); fewer users,
    sparser and noisier ratings."""

    # --- diagnostics -------------------------------------------------------------------------------
    observe_hidden: tuple[str, ...] = ()
    """Diagnostic, simulation only: hidden state appended to every candidate's features, some or all of
    :data:`rayrec.features.HIDDEN_FEATURE_NAMES` (each candidate's true click logit, quality and clickbait, the
    user's satisfaction; ``true`` or ``all``: every one). A policy trained with it sees (part of) what
    ``planner`` and ``oracle`` read, so the gap between it and the same method on the observable features is
    what that information costs. It cannot be served."""

    # --- limits ------------------------------------------------------------------------------------
    max_episode_steps: int = 100
    """Truncation cap on steps per session (registered with the env; above ``budget`` it rarely binds)."""
    fitted: dict[str, Any] = field(default_factory=dict)
    """Provenance of calibrated values (``rayrec calibrate`` fills it: data dir, log-likelihood, ...)."""

    def __post_init__(self) -> None:
        self.initial_satisfaction = tuple(float(v) for v in self.initial_satisfaction)  # type: ignore[assignment]
        problems: list[str] = []
        for name in (
            "num_items",
            "num_topics",
            "num_candidates",
            "slate_size",
            "history_pool",
            "rating_log_users",
            "item_log_users",
        ):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name} must be >= 1 (got {getattr(self, name)})")
        if self.dim is not None and self.dim < 2:
            problems.append(f"dim must be >= 2 (got {self.dim})")
        if self.history_length < 0:
            problems.append(f"history_length must be >= 0 (got {self.history_length})")
        if self.slate_size > self.num_candidates:
            problems.append(
                f"slate_size k={self.slate_size} exceeds num_candidates K={self.num_candidates}: "
                "a slate is k distinct candidates"
            )
        if self.category_quota < 1:
            problems.append(f"category_quota must be >= 1 (got {self.category_quota})")
        for name in (
            "observe_rating",
            "observe_feedback",
            "observe_last_click",
            "observe_item_log",
            "observe_lift",
            "retrieval_shortlist",
        ):
            if not isinstance(getattr(self, name), bool):
                problems.append(f"{name} must be true or false (got {getattr(self, name)!r})")
        if self.observe_last_click is True and self.observe_rating is not True:
            problems.append(
                "observe_last_click shows the rating of the last clicked item: set observe_rating=true"
            )
        if self.retrieval_shortlist and self.candidates != "faiss":
            problems.append(f"retrieval_shortlist applies to candidates=faiss only (got {self.candidates!r})")
        if self.candidates not in CANDIDATE_MODES:
            problems.append(f"candidates must be one of {CANDIDATE_MODES} (got {self.candidates!r})")
        if self.reward not in REWARD_NAMES:
            problems.append(f"reward must be one of {REWARD_NAMES} (got {self.reward!r})")
        if self.temperature <= 0:
            problems.append(f"temperature must be > 0 (got {self.temperature})")
        if not 0 < self.position_decay <= 1:
            problems.append(f"position_decay must be in (0, 1] (got {self.position_decay})")
        if not 0 <= self.interest_drift <= 1:
            problems.append(f"interest_drift must be in [0, 1] (got {self.interest_drift})")
        if not 0 <= self.clickbait_rate <= 1:
            problems.append(f"clickbait_rate must be in [0, 1] (got {self.clickbait_rate})")
        low, high = self.initial_satisfaction if len(self.initial_satisfaction) == 2 else (float("nan"),) * 2
        if not 0 <= low <= high <= 1:
            problems.append(
                f"initial_satisfaction must be a range within [0, 1] (got {self.initial_satisfaction})"
            )
        if self.budget <= 0:
            problems.append(f"budget must be > 0 (got {self.budget})")
        if self.max_episode_steps < 1:
            problems.append(f"max_episode_steps must be >= 1 (got {self.max_episode_steps})")
        for name in (
            "leave_base",
            "leave_scale",
            "boredom",
            "clickbait_penalty",
            "interest_noise",
            "satiation_gain",
            "satiation_penalty",
            "clickbait_fatigue",
            "return_slope",
            "diversity_weight",
            "clickbait_watch",
        ):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0 (got {getattr(self, name)})")
        for name in ("satiation_recovery", "fatigue_recovery", "satisfaction_recovery"):
            if not 0 <= getattr(self, name) <= 1:
                problems.append(f"{name} must be in [0, 1] (got {getattr(self, name)})")
        if self.sessions < 1:
            problems.append(f"sessions must be >= 1 (got {self.sessions})")
        if self.return_delay < 1:
            problems.append(f"return_delay must be >= 1 day (got {self.return_delay})")
        try:
            self.observe_hidden = hidden_feature_selection(self.observe_hidden)
        except ConfigError as exc:
            problems.append(str(exc))
        if self.user_split not in USER_SPLITS:
            problems.append(f"user_split must be one of {USER_SPLITS} (got {self.user_split!r})")
        if problems:
            raise ConfigError("SlateEnvConfig: " + "; ".join(problems))

    @property
    def feature_names(self) -> tuple[str, ...]:
        """The per-candidate feature names of this simulator's observation (:func:`rayrec.features.feature_names`)."""
        return feature_names(
            self.observe_hidden,
            self.observe_rating,
            self.observe_feedback,
            self.observe_last_click,
            self.observe_item_log,
            self.observe_lift,
        )

    def replace(self, **changes: Any) -> SlateEnvConfig:
        """A copy with ``changes`` applied (validated again); unknown names → ConfigError."""
        return config_with(self, **changes)


def config_with(base: SlateEnvConfig | None, **changes: Any) -> SlateEnvConfig:
    """``base`` (or the defaults) with keyword overrides, as ``gymnasium.make(..., **kwargs)`` passes them."""
    known = {f.name for f in dataclasses.fields(SlateEnvConfig)}
    unknown = sorted(set(changes) - known)
    if unknown:
        raise ConfigError(f"SlateEnvConfig: unknown fields {unknown} (known: {sorted(known)})")
    if base is None:
        return SlateEnvConfig(**changes)
    return dataclasses.replace(base, **changes)
