"""An event log as offline training data: logged requests as (observation, slate, propensities, return).

:func:`load_logged` reads an event log (:mod:`rayrec.logs.reader`) and looks its candidates up in the
simulator world the log belongs to: the one recorded with the log (``EVENTS/simulator.yaml``, written by
``rayrec ab`` and ``rayrec loop``) or, for a server's log, the world the command's simulator options
describe (``--index`` the index the server used). :func:`training_arrays` turns the requests into what the
learners read: each request's observation exactly as its ranker saw it, the shown slate (candidate
positions), the logged propensities, the per-item rewards and the discounted return of the rest of the
user's logged requests. :func:`write_transitions` writes them as Parquet for RLlib's offline API (Ray
Data reads them back).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from envs.config import SlateEnvConfig
from envs.factory import build_simulator
from rayrec import storage
from rayrec.config import load_config
from rayrec.errors import DataError
from rayrec.features import FEATURE_NAMES
from rayrec.logs.reader import SIMULATOR_FILE, ItemLookup, logged_requests, read_event_log
from rayrec.logs.requests import LoggedRequests
from rayrec.slate_scorer import OBS_KEYS

TRANSITIONS_DIR = "transitions"


def log_world(events: str, fallback: SlateEnvConfig) -> SlateEnvConfig:
    """The simulator world of the log under ``events``: ``EVENTS/simulator.yaml`` when the log has one,
    else ``fallback`` (the command's own simulator options)."""
    path = storage.join(events, SIMULATOR_FILE)
    return load_config(SlateEnvConfig, path) if storage.exists(path) else fallback


def load_logged(events: str, env_config: SlateEnvConfig) -> LoggedRequests:
    """The ranked requests of the log under ``events``, candidates looked up in ``env_config``'s catalog.

    Raises:
        DataError: no such directory, an empty, truncated or foreign log, or requests that do not fit
            the catalog (one line naming the file and what is missing; :mod:`rayrec.logs.reader`).
    """
    if not storage.exists(events):
        raise DataError(f"{events}: no such event-log directory")
    log = read_event_log(events)  # checked before the catalog is built
    sim = build_simulator(env_config, batch=1)
    # a simulated log holds its simulator's features; a server's are named by their number
    simulated = storage.exists(storage.join(events, SIMULATOR_FILE))
    names = env_config.feature_names if simulated else None
    return logged_requests(log, ItemLookup(sim.catalog.item_ids, sim.catalog.embeddings, names))


@dataclass(frozen=True)
class TrainingArrays:
    """n logged requests with a full slate of k positions, as the learners read them.

    Attributes:
        obs: ``profile`` [n, d], ``candidates`` [n, K, d], ``features`` [n, K, F], ``budget`` [n, 1]
            (float32): what the ranker saw.
        slate: [n, k] int64 candidate position shown at each slate position.
        propensity: [n, k] float64 logged probability of each shown item at its position.
        reward: [n, k] float64 reward each shown item earned.
        return_to_go: [n] float64 discounted return from this request to the user's last logged one:
            ``G_t = sum_{u >= t} gamma^(u - t) r_u`` with ``r_u`` the request's summed reward.
        user: [n] int64 user of each row (rows of a user contiguous, in time order).
        dropped: requests left out because they showed fewer than k items.
    """

    obs: dict[str, np.ndarray]
    slate: np.ndarray
    propensity: np.ndarray
    reward: np.ndarray
    return_to_go: np.ndarray
    user: np.ndarray
    dropped: int

    @property
    def size(self) -> int:
        return len(self.slate)

    @property
    def num_candidates(self) -> int:
        return self.obs["candidates"].shape[1]

    @property
    def slate_size(self) -> int:
        return self.slate.shape[1]

    def rows(self, index: np.ndarray) -> dict[str, np.ndarray]:
        """The observation of rows ``index`` [b] (each key [b, ...])."""
        return {key: value[index] for key, value in self.obs.items()}


def discounted_return_to_go(reward: np.ndarray, user: np.ndarray, gamma: float) -> np.ndarray:
    """[n] ``G_t = r_t + gamma G_{t+1}`` within each user's rows (``reward`` [n], ``user`` [n] contiguous)."""
    out = np.zeros(len(reward), dtype=np.float64)
    running = 0.0
    for t in range(len(reward) - 1, -1, -1):
        last = t == len(reward) - 1 or user[t + 1] != user[t]
        running = reward[t] + (0.0 if last else gamma * running)
        out[t] = running
    return out


def training_arrays(requests: LoggedRequests, gamma: float, where: str) -> TrainingArrays:
    """The requests that showed the log's full slate size, with their discounted returns-to-go.

    Returns are computed over every logged request of the user (a shorter slate still earned its reward).

    Raises:
        DataError: no request showed a full slate.
    """
    sizes = requests.slate_size
    k = int(sizes.max())
    keep = sizes == k
    if not keep.any():
        raise DataError(f"{where}: no request showed a full slate")
    per_request = requests.reward.sum(axis=1)
    rtg = discounted_return_to_go(per_request, requests.user, gamma)
    rows = np.flatnonzero(keep)
    return TrainingArrays(
        # the offline scorer reads FEATURE_NAMES (its export's default): a logged item_rating is left out
        obs={
            key: np.ascontiguousarray(value)
            for key, value in requests.observation(rows, FEATURE_NAMES).items()
        },
        slate=requests.shown[rows, :k],
        propensity=requests.propensity[rows, :k],
        reward=requests.reward[rows, :k],
        return_to_go=rtg[rows],
        user=requests.user[rows],
        dropped=int((~keep).sum()),
    )


def write_transitions(data: TrainingArrays, out: Path, rows_per_part: int = 4096) -> list[str]:
    """Write ``data`` as Parquet part files under ``out`` for RLlib's offline API; returns their paths.

    One row per logged request, as a one-step episode in RLlib's column schema: ``obs`` and ``new_obs``
    (the observation dict, packed by ``ray.rllib.utils.compression.pack``: RLlib unpacks the columns named
    in ``input_compress_columns``), ``actions`` (the slate [k]), ``rewards`` (the discounted return-to-go
    ``G_t``: MARWIL's advantage ``G_t - V(s_t)`` is then the Monte-Carlo one of Wang et al. 2018),
    ``terminateds`` (True: the return is already complete), ``eps_id``.
    """
    from ray.rllib.utils.compression import pack  # lz4 + pickle, what RLlib's offline reader unpacks

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for start in range(0, data.size, rows_per_part):
        index = np.arange(start, min(start + rows_per_part, data.size))
        obs = [pack({key: data.obs[key][i] for key in OBS_KEYS}) for i in index]
        table = pa.table(
            {
                "eps_id": [f"r{i}" for i in index],
                "obs": obs,
                "new_obs": obs,  # unused: every row is terminated
                "actions": [pack(data.slate[i]) for i in index],
                "rewards": data.return_to_go[index].astype(np.float32),
                "terminateds": np.ones(len(index), dtype=bool),
                "truncateds": np.zeros(len(index), dtype=bool),
            }
        )
        path = out / f"part-{start // rows_per_part:05d}.parquet"
        pq.write_table(table, path)
        paths.append(str(path))
    return paths
