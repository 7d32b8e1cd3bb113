"""The exported slate policy: RLlib module ↔ export round trip, the RLlib Plackett–Luce wrapper, bad artifacts."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from ray.rllib.core.columns import Columns

from envs import make_vector_env
from rayrec import plackett_luce
from rayrec.errors import ArtifactError, ConfigError
from rayrec.slate_policy import SlatePolicy
from rayrec.slate_scorer import (
    META_FILE,
    WEIGHTS_FILE,
    ExportConfig,
    ScorerConfig,
    load_exported_policy,
    save_exported_policy,
)
from trainers.rllib_module import SlateRLModule, TorchPlackettLuce

K, k = 8, 3


@pytest.fixture(scope="module")
def env():
    vec = make_vector_env(None, num_envs=4, num_candidates=K, slate_size=k)
    yield vec
    vec.close()


@pytest.fixture(scope="module")
def obs(env):
    observation, _ = env.reset(seed=7)
    return observation


@pytest.fixture(scope="module")
def module(env):
    torch.manual_seed(0)
    return SlateRLModule(
        observation_space=env.single_observation_space,
        action_space=env.single_action_space,
        model_config={"hidden": 16, "attention_layers": 1, "attention_heads": 2},
    )


def _export(module, tmp_path, **overrides):
    config = ExportConfig(
        scorer=module.scorer.config, slate_size=k, num_candidates=K, name="tiny", **overrides
    )
    return save_exported_policy(module.scorer, config, str(tmp_path / "policy"))


def test_export_round_trip_gives_the_rllib_modules_scores(module, obs, tmp_path):
    batch = {Columns.OBS: {key: torch.as_tensor(v) for key, v in obs.items()}}
    rllib_scores = module.forward_inference(batch)[Columns.ACTION_DIST_INPUTS].numpy()  # [B, K]
    policy = load_exported_policy(_export(module, tmp_path))
    assert isinstance(policy, SlatePolicy)
    np.testing.assert_allclose(policy.scores(obs), rllib_scores, rtol=1e-5, atol=1e-6)

    slate = policy.select(obs, k)
    np.testing.assert_array_equal(slate.indices, np.argsort(-rllib_scores, axis=1)[:, :k])
    np.testing.assert_array_equal(slate.propensities, 1.0)
    marg = policy.position_marginals(obs, k)
    assert marg.shape == (4, k, K) and np.allclose(marg.sum(-1), 1.0)


def test_sampled_mode_logs_position_marginals_as_propensities(module, obs, tmp_path):
    policy = load_exported_policy(_export(module, tmp_path), sampled=True, marginal_samples=64)
    slate = policy.select(obs, k, np.random.default_rng(0))
    assert all(len(set(row)) == k for row in slate.indices.tolist())
    assert ((slate.propensities > 0) & (slate.propensities <= 1)).all()
    again = policy.select(obs, k, np.random.default_rng(0))
    np.testing.assert_array_equal(slate.indices, again.indices)  # seeded by the caller's rng
    marg = policy.position_marginals(obs, k)
    np.testing.assert_allclose(marg.sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(
        marg[:, 0], torch.softmax(torch.from_numpy(policy.scores(obs)), -1).numpy(), rtol=1e-5
    )


def test_rllib_distribution_matches_enumeration(module, obs):
    dist_cls = module.get_exploration_action_dist_cls()
    logits = torch.tensor([[0.5, -1.0, 2.0, 0.0, 0.3]])
    dist = dist_cls.from_logits(logits)
    assert isinstance(dist, TorchPlackettLuce)
    slates = torch.tensor(list(itertools.permutations(range(5), k)))  # [60, k]
    log_p = dist_cls.from_logits(logits.expand(len(slates), 5)).logp(slates)
    assert log_p.exp().sum().item() == pytest.approx(1.0, rel=1e-5)
    w = logits[0].exp()
    first = slates[0].tolist()  # (0, 1, 2)
    by_hand = w[0] / w.sum() * w[1] / (w.sum() - w[0]) * w[2] / (w.sum() - w[0] - w[1])
    assert log_p[0].exp().item() == pytest.approx(by_hand.item(), rel=1e-5), first
    sample = dist.sample()
    assert sample.shape == (1, k) and len(set(sample[0].tolist())) == k
    assert dist.to_deterministic().sample().tolist() == [[2, 0, 4]]
    assert dist.entropy().shape == (1,)
    assert dist.kl(dist).item() == pytest.approx(0.0, abs=1e-6)
    np.testing.assert_allclose(
        dist.logp(sample).numpy(), plackett_luce.slate_log_prob(logits, sample).numpy()
    )


def test_corrupt_or_foreign_exports_are_refused(module, obs, tmp_path):
    out = _export(module, tmp_path)
    with pytest.raises(ArtifactError, match="another embedding dimension"):
        other = ScorerConfig(dim=module.scorer.config.dim * 2, hidden=16, attention_heads=2)
        load_exported_policy(out, expected=ExportConfig(scorer=other, slate_size=k, num_candidates=K))
    policy = load_exported_policy(out)
    wide = {**obs, "profile": np.zeros((4, 64), np.float32), "candidates": np.zeros((4, K, 64), np.float32)}
    with pytest.raises(ArtifactError, match="index does not match"):
        policy.select(wide, k)
    with pytest.raises(ConfigError, match="slate size"):
        policy.select(obs, K + 1)

    weights = tmp_path / "policy" / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:-4] + b"\x00\x00\x00\x00")
    with pytest.raises(ArtifactError, match="sha256"):
        load_exported_policy(out)

    meta = json.loads((tmp_path / "policy" / META_FILE).read_text())
    (tmp_path / "policy" / META_FILE).write_text(json.dumps(meta | {"format": "something-else"}))
    with pytest.raises(ArtifactError, match="format"):
        load_exported_policy(out)
    with pytest.raises(ArtifactError, match="not an exported rayrec policy"):
        load_exported_policy(str(tmp_path / "nowhere"))


def test_mismatched_weights_and_config_are_refused(module, tmp_path):
    out = _export(module, tmp_path)
    meta_path = tmp_path / "policy" / META_FILE
    meta = json.loads(meta_path.read_text())
    meta["scorer"]["hidden"] = 32  # config says 32 wide, the weights are 16 wide
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="weights do not fit"):
        load_exported_policy(out)
    with pytest.raises(ConfigError, match="must divide"):
        ScorerConfig(dim=8, hidden=10, attention_heads=4)
