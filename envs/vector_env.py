"""Native batched ``rayrec/SlateRec-v0``: N users in array operations, one candidate search per step."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from envs.choice import ChoiceModel
from envs.config import SlateEnvConfig, config_with
from envs.factory import build_simulator
from envs.simulator import INFO_KEYS, SlateSimulator, action_space, observation_space


class SlateRecVectorEnv(VectorEnv):
    """``num_envs`` independent users of :class:`envs.slate_env.SlateRecEnv`, stepped together.

    Same dynamics, spaces (batched) and arguments as the single env (its docstring is the
    documentation), plus ``num_envs``. Built by ``gymnasium.make_vec("rayrec/SlateRec-v0", num_envs=N,
    vectorization_mode="vector_entry_point")`` or :func:`envs.make_vector_env`.

    Autoreset follows Gymnasium 1.x's ``NEXT_STEP`` mode (``metadata["autoreset_mode"]``): the step in
    which a user's session ends returns its final observation with ``terminated`` or ``truncated``
    set; the next ``step`` ignores that row's action, starts a new user there and returns the new
    user's first observation with reward 0 and both flags False. Truncation at ``max_episode_steps`` is
    done here (there is no ``TimeLimit`` wrapper around a vector env).

    Info holds one array per key in :data:`envs.simulator.INFO_KEYS` plus ``slate_items`` [N, k], each
    with a ``_key`` mask that is False for rows that were reset in that step (Gymnasium's convention).
    """

    metadata: ClassVar[dict] = {"autoreset_mode": AutoresetMode.NEXT_STEP, "render_modes": []}

    def __init__(
        self,
        num_envs: int = 1,
        config: SlateEnvConfig | None = None,
        *,
        choice_model: ChoiceModel | None = None,
        render_mode: str | None = None,
        **overrides: Any,
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1 (got {num_envs})")
        self.config = config_with(config, **overrides)
        self.num_envs = num_envs
        self.render_mode = render_mode
        self.sim: SlateSimulator = build_simulator(self.config, batch=num_envs, choice_model=choice_model)
        self.single_observation_space = observation_space(
            self.config.num_candidates, self.sim.catalog.dim, self.config.feature_names
        )
        self.single_action_space = action_space(self.config.num_candidates, self.config.slate_size)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._done = np.zeros(num_envs, dtype=bool)

    @property
    def item_ids(self) -> np.ndarray:
        """[N_items] catalog item ids (info's ``chosen_item``/``slate_items`` index into it)."""
        return self.sim.catalog.item_ids

    def reset(self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None):
        if isinstance(seed, list):
            # One generator drives all rows; a list of seeds seeds it with all of them.
            seed = int(np.random.SeedSequence(seed).generate_state(1)[0])
        super().reset(seed=seed)
        self.sim.start_users(np.arange(self.num_envs), self.np_random)
        self.sim.refresh_candidates(self.np_random)
        self._done[:] = False
        return self.sim.observation(), {}

    def step(self, actions):
        actions = np.asarray(actions, dtype=np.int64).reshape(self.num_envs, -1)
        outcome = self.sim.step(actions, self.np_random)
        terminated = outcome.terminated
        truncated = (self.sim.users.total_steps >= self.config.max_episode_steps) & ~terminated
        reward = outcome.reward
        restarted = np.flatnonzero(self._done)
        if len(restarted):
            # Rows whose session ended last step: their action is ignored and a new user starts.
            self.sim.start_users(restarted, self.np_random)
            reward[restarted] = 0.0
            terminated[restarted] = False
            truncated[restarted] = False
        self._done = terminated | truncated
        self.sim.refresh_candidates(self.np_random)
        stepped = np.ones(self.num_envs, dtype=bool)
        stepped[restarted] = False
        info: dict[str, Any] = {}
        for key in (*INFO_KEYS, "slate_items"):
            info[key] = outcome.slate_items if key == "slate_items" else outcome.info[key]
            info[f"_{key}"] = stepped
        return self.sim.observation(), reward, terminated, truncated, info
