"""Off-policy evaluation of a target policy on logged requests, end to end (item level and session level).

1. Every logging policy and the target are replayed on every logged request
   (:class:`rayrec.logs.requests.LoggedRequests`) to get the probability each gives the logged slate. That
   gives the multi-logger mixture (:mod:`rayrec.logs.mixture`): the posterior over each user's arm and the
   trajectory weights. A user with a logged slate that the user's own logging policy, as rebuilt here,
   could not have shown is left out and counted (a near-tie re-ranked differently, say); more than
   :data:`MAX_UNREPRODUCIBLE` of such requests means the policies or the index are not the ones the log
   was written with, and is an error.
2. The slate click model is fitted to the logged slates (:mod:`rayrec.ab.reward_model`).
3. Every policy's position marginals on every request give the item-level estimators' inputs
   (:class:`rayrec.ab.ope.LoggedSlates`); the click model on the logged and on the target's slates (the
   target's own slate when it is deterministic, else :data:`TARGET_SAMPLES` of them) gives the direct
   method's values and the Q-features of the session-level estimators
   (:class:`rayrec.ab.session_ope.LoggedEpisodes`).
4. The estimators of both levels, with their support diagnostics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import numpy as np

from rayrec.ab.ope import LoggedSlates, OpeEstimate, estimate_all
from rayrec.ab.reward_model import EmbeddingBasis, SlateRewardModel, fit_reward_model
from rayrec.ab.session_ope import LoggedEpisodes, estimate_episodes, q_features
from rayrec.errors import ConfigError, DataError, RayrecError
from rayrec.features import select_features
from rayrec.logs.mixture import LoggingMixture, WeightDiagnostics, slate_log_prob, within_user_cumsum
from rayrec.logs.requests import LoggedRequests
from rayrec.rerank import policy_feature_names
from rayrec.slate_policy import Observation, SlatePolicy

REPLAY_BATCH = 2048
"""Requests whose observations are rebuilt and scored by the policies at once."""
TARGET_SAMPLES = 32
"""Slates drawn from a randomised target per request for its expected click-model value."""
MAX_UNREPRODUCIBLE = 0.01
"""Share of logged requests whose own logging policy may fail to reproduce their slate before it is an
error (their users are left out)."""
BASIS_SAMPLE = 50_000
"""Shown items whose embeddings fit the embedding basis."""
ITEM_VALUE = "expected reward per request on the logged requests (item-position weights)"
SESSION_VALUE = "expected return per user: the summed reward of all of a user's requests"

T = TypeVar("T")


@dataclass(frozen=True)
class Replay:
    """What the estimators of both levels read, from one replay of the policies on a log.

    Attributes:
        requests: the logged requests evaluated (users that could not be reproduced left out).
        slates: the item-level estimators' inputs.
        episodes: the session-level estimators' inputs.
        shares: share of the users each logging policy ranked for.
        dropped_users: users left out (a logged slate their own policy could not have shown).
    """

    requests: LoggedRequests
    slates: LoggedSlates
    episodes: LoggedEpisodes
    shares: dict[str, float]
    dropped_users: int


def _batches(requests: LoggedRequests) -> Iterator[tuple[np.ndarray, int]]:
    """(rows, slate size): batches of at most :data:`REPLAY_BATCH` requests of one slate size."""
    size = requests.slate_size
    for k in np.unique(size):
        rows = np.flatnonzero(size == k)
        for start in range(0, len(rows), REPLAY_BATCH):
            yield rows[start : start + REPLAY_BATCH], int(k)


def _scored(policy: SlatePolicy, source: str, call: Callable[..., T], *args) -> T:
    """``call(*args)``, with a policy's complaint about the logged requests as one line naming the log."""
    try:
        return call(*args)
    except (RayrecError, ValueError) as exc:
        raise DataError(f"{source}: the logged requests do not fit policy {policy.name!r}: {exc}") from None


def _seen(policy: SlatePolicy, requests: LoggedRequests, obs: Observation) -> Observation:
    """``obs`` with the logged features ``policy`` reads: a server over a rated index logs ``item_rating``
    beside the features of the policies that do not read it (:func:`rayrec.features.select_features`)."""
    names = policy_feature_names(policy)
    return _scored(
        policy,
        requests.source,
        lambda: {**obs, "features": select_features(obs["features"], requests.feature_names, names)},
    )


def _logger_policies(requests: LoggedRequests, loggers: Mapping[str, SlatePolicy]) -> list[SlatePolicy]:
    """The policies of ``requests.logger_names``; every user must have been ranked by one of them only."""
    missing = [name for name in requests.logger_names if name not in loggers]
    if missing:
        raise ConfigError(
            f"{requests.source}: no policy to re-score the logging policies {missing} with; "
            "name them (rayrec ope --logger NAME=POLICY)"
        )
    first = np.r_[True, requests.user[1:] != requests.user[:-1]]
    mixed = np.flatnonzero(requests.logger != requests.logger[first][requests.user])
    if len(mixed):
        names = sorted(
            {requests.logger_names[i] for i in requests.logger[requests.user == requests.user[mixed[0]]]}
        )
        raise DataError(
            f"{requests.source}: {len(np.unique(requests.user[mixed]))} users were ranked by more than one "
            f"policy (e.g. by {names}); the multi-logger weights assume each user stays with one arm's policy"
        )
    return [loggers[name] for name in requests.logger_names]


def _slate_log_probs(
    requests: LoggedRequests, policies: list[SlatePolicy]
) -> np.ndarray:  # [len(policies), n]
    out = np.empty((len(policies), len(requests.user)))
    for rows, k in _batches(requests):
        obs, shown = requests.observation(rows), requests.shown[rows, :k]
        for a, policy in enumerate(policies):
            seen = _seen(policy, requests, obs)
            out[a, rows] = _scored(policy, requests.source, slate_log_prob, policy, seen, shown)
    return out


def _slate_q_features(
    slates: np.ndarray, click: np.ndarray, obs: Observation, projected: np.ndarray
) -> np.ndarray:
    """[b, P] Q-features of slates [b, k] with click probabilities [b, k]; projected: [b, K, r] candidates."""
    items = slates[:, :, None]
    return q_features(
        click,
        np.take_along_axis(obs["features"], items, axis=1),
        np.take_along_axis(projected, items, axis=1),
        obs["budget"],
    )


def _reproducible(requests: LoggedRequests, log_slate: np.ndarray) -> tuple[LoggedRequests, np.ndarray, int]:
    """The users whose every logged slate their own logging policy could have shown.

    Args:
        log_slate: [A + 1, n] log-probabilities of the logged slates under each logging policy (and the
            target, last).

    Returns:
        (their requests, their columns of ``log_slate``, the number of users left out).
    """
    own = log_slate[requests.logger, np.arange(len(requests.user))]
    failed = ~np.isfinite(own)
    if failed.mean() > MAX_UNREPRODUCIBLE:
        names = sorted({requests.logger_names[i] for i in requests.logger[failed]})
        raise DataError(
            f"{requests.source}: {int(failed.sum())} of {len(failed)} logged slates could not have been "
            f"shown by their own logging policy ({names}) as rebuilt here: pass the index and the "
            "policies (--logger NAME=POLICY) the log was written with"
        )
    keep = np.bincount(requests.user, weights=failed, minlength=requests.num_users) == 0  # [U]
    return requests.take_users(keep), log_slate[:, keep[requests.user]], int((~keep).sum())


def _click_model(requests: LoggedRequests, seed: int) -> tuple[SlateRewardModel, np.ndarray]:
    """The slate click model fitted to the logged slates, and the catalog's projected embeddings [N, r]."""
    n = len(requests.user)
    shown_items = requests.candidates[np.arange(n)[:, None], requests.shown]  # [n, k] catalog rows
    sample = np.random.default_rng(seed).permutation(shown_items[requests.mask])[:BASIS_SAMPLE]
    basis = EmbeddingBasis.fit(requests.item_embeddings[sample].astype(np.float64))
    projected = basis.project(requests.item_embeddings.astype(np.float64))  # [N, r]
    shown_features = np.take_along_axis(requests.features, requests.shown[:, :, None], axis=1)  # [n, k, F]
    model = fit_reward_model(shown_features, projected[shown_items], requests.reward, requests.mask)
    return model, projected


def replay(
    requests: LoggedRequests,
    target: SlatePolicy,
    loggers: Mapping[str, SlatePolicy],
    *,
    clip: float | None = None,
    seed: int = 0,
) -> Replay:
    """Replay ``target`` and the logging policies ``loggers`` (by the log's policy names) on ``requests``.

    Args:
        clip: weight threshold of the clipped item-level estimators (None: none).
        seed: seeds the embedding basis's sample and the slates drawn from a randomised target.
    """
    policies = _logger_policies(requests, loggers)
    requests, log_slate, dropped = _reproducible(requests, _slate_log_probs(requests, [*policies, target]))
    user, n = requests.user, len(requests.user)
    first = np.r_[True, user[1:] != user[:-1]]
    counts = np.bincount(requests.logger[first], minlength=len(policies))
    active = np.flatnonzero(counts)  # logging policies with users left
    mixture = LoggingMixture(
        names=tuple(requests.logger_names[a] for a in active),
        shares=counts[active] / counts.sum(),
        user=user,
        log_slate=log_slate[active],
    )
    posterior = mixture.posterior()  # [n, A']
    model, projected = _click_model(requests, seed)

    width = requests.shown.shape[1]
    target_prop, logging_prop, predicted = np.ones((3, n, width))
    unsupported, direct, excess = np.zeros((3, n))
    phi, phi_expected = np.zeros((2, n, 4 + requests.features.shape[2] + projected.shape[1]))
    rng = np.random.default_rng(seed)
    for rows, k in _batches(requests):
        obs, shown = requests.observation(rows), requests.shown[rows, :k]
        marginals = np.stack(
            [
                _scored(
                    policies[a],
                    requests.source,
                    policies[a].position_marginals,
                    _seen(policies[a], requests, obs),
                    k,
                )
                for a in active
            ]
        ).astype(np.float64)  # [A', b, k, K]
        target_obs = _seen(target, requests, obs)
        behaviour = np.einsum("ba,abpj->bpj", posterior[rows], marginals)  # [b, k, K]
        theirs = _scored(target, requests.source, target.position_marginals, target_obs, k).astype(np.float64)
        target_prop[rows, :k] = np.take_along_axis(theirs, shown[:, :, None], axis=2)[..., 0]
        logging_prop[rows, :k] = np.take_along_axis(behaviour, shown[:, :, None], axis=2)[..., 0]
        unsupported[rows] = (theirs * (theirs > n * behaviour)).sum(axis=(1, 2))  # weight above n
        if clip is not None:
            excess[rows] = np.maximum(theirs - clip * behaviour, 0.0).sum(axis=(1, 2))
        if np.isin(theirs, (0.0, 1.0)).all():  # deterministic: its own slate
            target_slates = theirs.argmax(axis=2)[:, None, :]  # [b, 1, k]
        else:
            target_slates = np.stack(
                [target.select(target_obs, k, rng).indices for _ in range(TARGET_SAMPLES)], axis=1
            )
        candidates = projected[requests.candidates[rows]]  # [b, K, r]
        logits = model.candidate_logits(obs["features"], candidates)  # [b, K]
        full = np.ones(shown.shape, dtype=bool)
        logged_click = model.click_probabilities(logits, shown, full)  # [b, k]
        predicted[rows, :k] = model.click_value * logged_click
        phi[rows] = _slate_q_features(shown, logged_click, obs, candidates)
        draws = target_slates.shape[1]
        for slate in target_slates.transpose(1, 0, 2):  # [b, k] each
            click = model.click_probabilities(logits, slate, full)
            direct[rows] += model.click_value * click.sum(axis=1) / draws
            phi_expected[rows] += _slate_q_features(slate, click, obs, candidates) / draws

    mask = requests.mask
    return Replay(
        requests=requests,
        slates=LoggedSlates(
            user_index=user,
            mask=mask,
            reward=requests.reward,
            target_propensity=np.where(mask, target_prop, 1.0),
            logging_propensity=np.where(mask, logging_prop, 1.0),
            direct=direct,
            predicted=np.where(mask, predicted, 0.0),
            unsupported=unsupported,
            clip=clip,
            clip_excess=excess if clip is not None else None,
        ),
        episodes=LoggedEpisodes(
            user=user,
            reward=np.where(mask, requests.reward, 0.0).sum(axis=1),
            features=phi,
            expected_features=phi_expected,
            log_weight=within_user_cumsum(log_slate[-1], user, inclusive=True) - mixture.log_behaviour(),
        ),
        shares=dict(zip(mixture.names, mixture.shares.tolist(), strict=True)),
        dropped_users=dropped,
    )


@dataclass(frozen=True)
class OffPolicyResult:
    """Both levels' estimates of one target on one log, with their diagnostics (``to_json``)."""

    target: str
    requests: int
    users: int
    estimators: dict[str, OpeEstimate]
    diagnostics: WeightDiagnostics
    session_estimators: dict[str, OpeEstimate]
    session_diagnostics: WeightDiagnostics
    logging_policies: dict[str, int]
    """Requests per logging policy."""
    logger_shares: dict[str, float]
    dropped_users: int
    clip: float | None
    clip_bias_bound: float

    def to_json(self) -> dict[str, Any]:
        """The ``rayrec ope --json`` document (without the log's own counts)."""
        clipping = (
            {"clip": self.clip, "clip_bias_bound": self.clip_bias_bound} if self.clip is not None else {}
        )
        return {
            "target": self.target,
            "n": self.requests,
            "users": self.users,
            "value": ITEM_VALUE,
            "estimators": {name: e.to_json() for name, e in self.estimators.items()},
            "diagnostics": asdict(self.diagnostics) | clipping,
            "session_value": SESSION_VALUE,
            "session_estimators": {name: e.to_json() for name, e in self.session_estimators.items()},
            "session_diagnostics": asdict(self.session_diagnostics),
            "logging_policies": self.logging_policies,
            "logger_shares": self.logger_shares,
            "dropped_users": self.dropped_users,
        }


def evaluate_logged(
    requests: LoggedRequests,
    target: SlatePolicy,
    loggers: Mapping[str, SlatePolicy],
    *,
    alpha: float = 0.05,
    resamples: int = 1000,
    seed: int = 0,
    clip: float | None = None,
) -> OffPolicyResult:
    """Item-level and session-level estimates of ``target`` on ``requests`` (module docstring)."""
    played = replay(requests, target, loggers, clip=clip, seed=seed)
    kept = played.requests
    names, counts = np.unique(np.asarray(kept.logger_names)[kept.logger], return_counts=True)
    return OffPolicyResult(
        target=target.name,
        requests=len(kept.user),
        users=kept.num_users,
        estimators=estimate_all(played.slates, alpha=alpha, resamples=resamples, seed=seed),
        diagnostics=played.slates.diagnostics(),
        session_estimators=estimate_episodes(played.episodes, alpha=alpha, resamples=resamples, seed=seed),
        session_diagnostics=played.episodes.diagnostics(),
        logging_policies=dict(zip(names.tolist(), counts.tolist(), strict=True)),
        logger_shares=played.shares,
        dropped_users=played.dropped_users,
        clip=clip,
        clip_bias_bound=played.slates.clip_bias_bound(),
    )
