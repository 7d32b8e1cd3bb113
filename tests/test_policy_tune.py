"""``rayrec train-policy --tune``: a tiny Ray Tune search on the session's real Ray (2 trials × 1 iteration),
its trial table and preset, the preset read back by ``--hparams``, the checked-in presets, and the
one-line errors of bad search settings and bad preset files."""

from __future__ import annotations

import json

import pytest
import yaml

from rayrec.cli import build_parser, main
from rayrec.errors import ConfigError
from trainers.policy_config import TrainPolicyConfig
from trainers.tune_config import (
    PRESET_DIR,
    SEARCH_SPACES,
    read_hparams,
    search_space,
    train_config_from_args,
)

TINY = [
    "--num-candidates", "10", "--slate-size", "3",
    "--train-batch-size", "256", "--minibatch-size", "128", "--num-epochs", "1", "--envs-per-runner", "8",
    "--hidden", "16", "--attention-heads", "2", "--validate-every", "1", "--validate-users", "16",
]  # fmt: skip


def parse(*argv: str):
    return build_parser().parse_args(["train-policy", *argv])


@pytest.fixture(scope="module")
def tuned(ray_session, tmp_path_factory):
    out = tmp_path_factory.mktemp("tune") / "run"
    preset = out.parent / "chosen.yaml"
    argv = ["train-policy", "--tune", "--tune-samples", "2", "--tune-iterations", "1", "--out", str(out)]
    assert main([*argv, "--tune-preset", str(preset), *TINY]) == 0
    return out, preset


def test_tune_runs_real_trials_and_writes_the_trial_table(tuned):
    out, _ = tuned
    summary = json.loads((out / "tune.json").read_text())
    trials = summary["trials"]
    assert len(trials) == 2 and summary["algo"] == "ppo" and summary["resources_per_trial"] == {"CPU": 1.0}
    space = SEARCH_SPACES["ppo"]
    for row in trials:
        assert row["status"] == "complete" and row["iterations"] == 1, row
        s = row["settings"]
        assert set(s) == set(space)
        assert space["lr"].low <= s["lr"] <= space["lr"].high
        assert space["entropy_coeff"].low <= s["entropy_coeff"] <= space["entropy_coeff"].high
        assert s["clip_param"] in space["clip_param"].values
        assert s["minibatch_size"] in (128, 256)  # 512 exceeds the 256-step batch: dropped from the choice
        run = out / row["run_dir"]
        # each trial is a real training run with the sampled settings, validated, never evaluated on test users
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert {k: config[k] for k in space} == s and config["eval_users"] == 0
        assert not (run / "eval.json").exists()
        (progress,) = [json.loads(line) for line in (run / "progress.jsonl").read_text().splitlines()]
        assert progress["eval/session_return"] == pytest.approx(row["validation_return"])
        assert (run / "policy" / "policy.json").exists()
    assert trials[0]["settings"]["lr"] != trials[1]["settings"]["lr"]  # random search: different settings
    best = max(trials, key=lambda r: r["validation_return"])
    assert summary["best"]["trial"] == best["trial"] and summary["best"]["settings"] == best["settings"]
    table = (out / "tune.md").read_text()
    assert f"| **{best['trial']}** (best) |" in table and "validation return (final)" in table
    assert sum(line.startswith("| ") for line in table.splitlines()) == 2 + 2  # header, separator, 2 trials


def test_the_preset_loads_back_into_a_training_config(tuned):
    out, preset = tuned
    best = json.loads((out / "tune.json").read_text())["best"]["settings"]
    assert read_hparams(str(preset)) == {"algo": "ppo", **best}
    cfg = train_config_from_args(parse("--out", "o", "--hparams", str(preset)))
    assert isinstance(cfg, TrainPolicyConfig) and cfg.algo == "ppo"
    assert {k: getattr(cfg, k) for k in best} == best
    # a flag given on the command line wins over the preset; the preset wins over the defaults
    cfg = train_config_from_args(parse("--out", "o", "--hparams", str(preset), "--lr", "0.0123"))
    assert cfg.lr == 0.0123 and cfg.clip_param == best["clip_param"]
    with pytest.raises(ConfigError, match="holds ppo settings, but --algo is slateq"):
        train_config_from_args(parse("--out", "o", "--hparams", str(preset), "--algo", "slateq"))


@pytest.mark.parametrize("algo", ["ppo", "slateq"])
def test_the_checked_in_presets_load_by_name(algo):
    settings = read_hparams(f"{algo}-default")
    assert settings["algo"] == algo and set(settings) == {"algo", *SEARCH_SPACES[algo]}
    cfg = train_config_from_args(parse("--out", "o", "--hparams", f"{algo}-default"))
    assert cfg.algo == algo and all(getattr(cfg, k) == v for k, v in settings.items())
    assert (PRESET_DIR / f"{algo}-default.yaml").read_text().startswith("# rayrec train-policy --hparams")


def run_cli_error(capsys, *argv: str) -> str:
    assert main(["train-policy", "--out", "unused", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err


def test_bad_search_settings_are_one_line_errors(capsys, tmp_path):
    out = str(tmp_path / "t")
    assert "tune_samples must be >= 1 (got 0)" in run_cli_error(capsys, "--tune", "--tune-samples", "0")
    assert "tune_iterations must be >= 1" in run_cli_error(capsys, "--tune", "--tune-iterations", "0")
    err = run_cli_error(capsys, "--tune", "--tune-iterations", "2", "--tune-grace-period", "3", "--out", out)
    assert "--tune-grace-period 3 exceeds the 2 iterations" in err
    err = run_cli_error(capsys, "--tune", "--validate-every", "0", "--out", out)
    assert "--validate-every must be >= 1" in err
    err = run_cli_error(capsys, "--tune", "--resume", "--out", out)
    assert "neither --from-events nor --resume" in err
    assert "needs a local --out" in run_cli_error(capsys, "--tune", "--out", "s3://bucket/tune")
    with pytest.raises(ConfigError, match="no search space for algo 'dqn'"):
        search_space(TrainPolicyConfig(out="o", algo="dqn"))  # type: ignore[arg-type]


def test_bad_preset_files_are_one_line_errors(capsys, tmp_path):
    assert "no such file and no checked-in preset" in run_cli_error(capsys, "--hparams", "nope-default")
    missing = str(tmp_path / "missing.yaml")
    assert f"--hparams {missing}: no such file" in run_cli_error(capsys, "--hparams", missing)
    broken = tmp_path / "broken.yaml"
    broken.write_text("lr: [0.1\n")
    assert "cannot read it as YAML" in run_cli_error(capsys, "--hparams", str(broken))
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00\x81")
    assert "cannot read it as YAML" in run_cli_error(capsys, "--hparams", str(binary))
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("0.001\n")
    assert "expected a mapping" in run_cli_error(capsys, "--hparams", str(scalar))
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("algo: ppo\nlr: 0.001\nlearning_rate: 0.001\n")
    assert "unknown train-policy settings ['learning_rate']" in run_cli_error(
        capsys, "--hparams", str(unknown)
    )
    bad_algo = tmp_path / "dqn.yaml"
    bad_algo.write_text("algo: dqn\n")
    assert "unknown algo 'dqn'" in run_cli_error(capsys, "--hparams", str(bad_algo))
    bad_value = tmp_path / "bad_value.yaml"
    bad_value.write_text("lr: -0.1\n")
    assert "lr and clip_param must be > 0" in run_cli_error(capsys, "--hparams", str(bad_value))
    not_a_number = tmp_path / "not_a_number.yaml"
    not_a_number.write_text("lr: fast\n")
    assert "lr must be a number, got 'fast'" in run_cli_error(capsys, "--hparams", str(not_a_number))


def test_a_hand_written_exponent_is_read_as_the_float_it_means(tmp_path):
    preset = tmp_path / "hand.yaml"
    preset.write_text("algo: ppo\nlr: 3e-4\nminibatch_size: 128\n")  # YAML 1.1 reads 3e-4 as a string
    assert read_hparams(str(preset)) == {"algo": "ppo", "lr": 3e-4, "minibatch_size": 128}
