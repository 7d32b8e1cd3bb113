"""``rayrec/SlateRec-v0``: one simulated user at a time (the native batched version is in envs.vector_env)."""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from envs.choice import ChoiceModel
from envs.config import SlateEnvConfig, config_with
from envs.factory import build_simulator
from envs.simulator import INFO_KEYS, SlateSimulator, action_space, observation_space

SINGLE_ROW = np.zeros(1, dtype=np.int64)


class SlateRecEnv(gym.Env):
    """Slate recommendation to one simulated user whose interests, satisfaction and patience are hidden.

    ## Description

    A RecSim-style session. Each step the env retrieves ``K`` candidate items for the user (by default
    with FAISS, from the user's *observed* profile: the items they clicked before and during the
    session, consumed items excluded); the agent shows a slate of ``k`` of them; the user clicks one
    or nothing by a conditional-logit choice with position bias. Clicks pull the user's hidden
    interest toward the item; clickbait items are clicked more but cost satisfaction, and dissatisfied
    users leave early. So the policy that maximises immediate clicks is not the one that maximises a
    session's clicks: that gap is what reinforcement learning is for. Clickbait is observable: item
    embeddings carry it (a direction in the synthetic catalog; the text with a real encoder).

    Further dynamics, each off by default and switched on by a preset (``envs.presets``):

    - **Satiation** (RecSim's interest evolution): each click adds the item's embedding to a hidden
      satiation vector that fades every step (``satiation_gain``, ``satiation_recovery``); an item's utility
      falls with its alignment to it (``satiation_penalty``), so what was just consumed appeals less for a
      while and variety pays later.
    - **Clickbait tolerance**: the satisfaction a clickbait click costs grows with the user's recent
      clickbait (``clickbait_fatigue``, fading by ``fatigue_recovery``): an occasional one is tolerated, a run
      of them is not.
    - **Leaving and returning** (KuaiSim's retention): a user has up to ``sessions`` sessions; when one ends
      the user comes back with a probability, and after a delay in days, that depend on the satisfaction it
      ended with (``return_bias``, ``return_slope``, ``return_delay``), and recovers part of the lost
      satisfaction meanwhile.
    - **Objectives** (``reward``): clicks, engagement (the clicked item's hidden quality), return
      (``1 / days`` until the next session), or watch time (RecSim's long-term satisfaction world,
      "chocolate vs kale"): a click is watched for as long as the user's satisfaction allows, clickbait
      ``1 + clickbait_watch`` times longer. Satisfaction becomes a stock: build it with quality while it is
      low, spend it on clickbait while it is high — a policy that depends on the user's state, which no
      fixed per-item rule is (preset ``long-term``).

    ## Action Space

    ``MultiDiscrete([K] * k)``: the candidate positions shown, in display order (position 0 on top).
    Repeats are allowed in the action but not shown: reading left to right, a candidate already in
    the slate is replaced by the best-ranked (lowest retrieval rank) candidate not yet in it.

    ## Observation Space

    ``Dict`` of float32 arrays, exactly :mod:`rayrec.features`'s contract without the batch axis:

    | key | shape | meaning |
    | --- | --- | --- |
    | ``profile`` | ``(d,)`` | normalised mean embedding of the items the user engaged with |
    | ``candidates`` | ``(K, d)`` | candidate embeddings, in retrieval order |
    | ``features`` | ``(K, 3)`` | retrieval_score (profile · item), popularity (log-scaled, [0, 1]), retrieval_rank ([0, 1]) |
    | ``budget`` | ``(1,)`` | remaining session budget as a fraction of ``budget`` |

    ``observe_rating=True`` appends ``item_rating`` to ``features`` (each candidate's mean logged rating,
    :func:`rayrec.features.rating_feature`), ``observe_feedback=True`` then ``last_engagement`` (the fraction
    the user watched of the last item they clicked: their satisfaction then, the same in every row; 0 before
    their first click), ``observe_last_click=True`` then ``last_click_rating`` (the ``item_rating`` of that
    clicked item, the same in every row; 0 before the first click), and ``observe_hidden`` then appends the
    simulation-only hidden columns: ``features`` is ``(K, len(config.feature_names))``.

    ## Rewards

    ``reward="clicks"`` (default): 1 per click. ``reward="engagement"``: the clicked item's hidden quality
    in [0, 1]. ``reward="watch"``: the user's satisfaction before the click, times ``1 + clickbait_watch``
    for clickbait. Nothing without a click. ``reward="return"``: ``1 / days`` when a session ends and the
    user comes back ``days`` later.

    ## Starting State

    A user is drawn from the synthetic world's topic mixtures (built-in catalog), from a random item's
    neighbourhood (index without logs) or from a real user's recent history (``data_dir``), with
    Gaussian noise on the interest. A synthetic user arrives with ``history_length`` items chosen by
    the same choice model (their observed profile); satisfaction starts uniform in
    ``initial_satisfaction``; the budget starts at ``budget`` steps.

    ## Episode End

    A session ends when the user leaves (probability ``leave_base + leave_scale * (1 - satisfaction)**2``
    after each step) or has spent the budget (one unit per step). The episode — the user's sessions — is
    terminated when a session ends and the user does not come back (always, with ``sessions=1``).
    Truncated at ``max_episode_steps`` steps over all sessions (registered; by the ``TimeLimit`` wrapper
    of ``gymnasium.make``).

    ## Info

    ``clicked`` (bool), ``click_position`` (slate position or -1), ``chosen_item`` (catalog index or
    -1), ``satisfaction`` (after the step), ``left`` (bool), ``session_ended`` (bool), ``return_days``
    (days until the next session, 0 when none), and ``slate_items`` (catalog indices shown).
    :attr:`item_ids` maps catalog indices to item ids.

    ## Arguments

    ```python
    gymnasium.make("rayrec/SlateRec-v0", index_dir=None, data_dir=None, num_candidates=20,
                   slate_size=5, candidates="faiss", **other_SlateEnvConfig_fields)
    ```

    Every field of :class:`envs.config.SlateEnvConfig` is a keyword argument; ``config=`` passes a whole
    config (keywords then override it), e.g. ``config=envs.presets.preset("satiation")``. ``choice_model=``
    swaps the user choice model (tests).

    ## References

    - Ie, E. et al. (2019). "RecSim: A Configurable Simulation Platform for Recommender Systems."
      arXiv:1909.04847 (user state, choice model, interest evolution, long-term satisfaction).
    - Zhao, K. et al. (2023). "KuaiSim: A Comprehensive Simulator for Recommender Systems." NeurIPS Datasets
      and Benchmarks (leave and return, retention).
    - McFadden, D. (1973). "Conditional logit analysis of qualitative choice behavior."
    """

    metadata: ClassVar[dict] = {"render_modes": []}

    def __init__(
        self,
        config: SlateEnvConfig | None = None,
        *,
        choice_model: ChoiceModel | None = None,
        render_mode: str | None = None,
        **overrides: Any,
    ) -> None:
        self.config = config_with(config, **overrides)
        self.render_mode = render_mode
        self.sim: SlateSimulator = build_simulator(self.config, batch=1, choice_model=choice_model)
        self.observation_space = observation_space(
            self.config.num_candidates, self.sim.catalog.dim, self.config.feature_names
        )
        self.action_space = action_space(self.config.num_candidates, self.config.slate_size)

    @property
    def item_ids(self) -> np.ndarray:
        """[N] catalog item ids (info's ``chosen_item``/``slate_items`` index into it)."""
        return self.sim.catalog.item_ids

    def _obs(self) -> dict[str, np.ndarray]:
        return {key: value[0] for key, value in self.sim.observation().items()}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.sim.start_users(SINGLE_ROW, self.np_random)
        self.sim.refresh_candidates(self.np_random)
        return self._obs(), {}

    def step(self, action):
        outcome = self.sim.step(np.asarray(action, dtype=np.int64).reshape(1, -1), self.np_random)
        self.sim.refresh_candidates(self.np_random)
        info: dict[str, Any] = {key: outcome.info[key][0].item() for key in INFO_KEYS}
        info["slate_items"] = outcome.slate_items[0]
        return self._obs(), float(outcome.reward[0]), bool(outcome.terminated[0]), False, info
