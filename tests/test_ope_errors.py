"""``rayrec ope`` on logs it cannot use: one ``error:`` line that names the file and what is missing.

The broken logs are made from one small simulated log (two arms, a few hundred one-step users, its
``simulator.yaml`` beside it) by removing or damaging what each case needs.
"""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from _ab_cli import cli_output

from rayrec.errors import DataError
from rayrec.events import read_impressions, read_requests

TINY_WORLD = {
    "num_items": 300,
    "num_topics": 4,
    "dim": 8,
    "num_candidates": 6,
    "slate_size": 2,
    "max_episode_steps": 1,
}


@pytest.fixture(scope="module")
def small_log(tmp_path_factory):
    from envs.config import SlateEnvConfig
    from rayrec.ab.simulate import simulate_arm_users, simulated_user_ids
    from rayrec.assignment import Arm
    from rayrec.config import save_config
    from rayrec.logs.reader import SIMULATOR_FILE

    config = SlateEnvConfig(**TINY_WORLD)
    events = tmp_path_factory.mktemp("ope-errors") / "events"
    for seed, policy in enumerate(("random", "greedy")):
        simulate_arm_users(config, Arm(policy, policy), simulated_user_ids(200, seed), seed, str(events))
    save_config(config, events, name=SIMULATOR_FILE)
    return events


def _write(table: pa.Table, directory) -> None:
    shutil.rmtree(directory)
    directory.mkdir()
    pq.write_table(table, directory / "part-0001.parquet")


def _damage(events, case: str) -> str:
    """Damage the copy ``events`` for ``case``; returns the path the error must name."""
    impressions, requests = read_impressions(str(events)), read_requests(str(events))
    if case == "empty":
        shutil.rmtree(events / "impressions")
        (events / "impressions").mkdir()
        return "impressions"
    if case == "foreign":
        pq.write_table(pa.table({"user": ["u"], "clicked": [1]}), events / "impressions" / "part-9.parquet")
        return "impressions"
    if case == "cut_part_file":  # the reader skips a part it cannot read: its requests are then missing
        part = sorted((events / "requests").glob("part-*.parquet"))[0]
        part.write_bytes(part.read_bytes()[:200])
        return "requests"
    if case == "truncated":  # the last request rows never made it to disk
        _write(requests.slice(0, requests.num_rows // 2), events / "requests")
        return "requests"
    if case == "requests_without_impressions":
        keep = pc.invert(
            pc.is_in(impressions.column("request_id"), requests.column("request_id").slice(0, 5))
        )
        _write(impressions.filter(keep), events / "impressions")
        return "impressions"
    if case == "profile_dims":
        profile = pa.array([[0.1, 0.2]] * requests.num_rows, pa.list_(pa.float32()))
        _write(
            requests.set_column(requests.schema.get_field_index("profile"), "profile", profile),
            events / "requests",
        )
        return "requests"
    if case == "unknown_candidates":
        ids = requests.column("candidate_ids").to_pylist()
        ids[0] = ["not-an-item", *ids[0][1:]]
        column = pa.array(ids, pa.list_(pa.string()))
        _write(
            requests.set_column(requests.schema.get_field_index("candidate_ids"), "candidate_ids", column),
            events / "requests",
        )
        return "requests"
    if case == "unknown_logger":  # a policy the command cannot rebuild by its name
        for kind, table in (("requests", requests), ("impressions", impressions)):
            policy = pc.replace_substring(table.column("policy"), "greedy", "mystery-ranker")
            _write(table.set_column(table.schema.get_field_index("policy"), "policy", policy), events / kind)
        return str(events)
    return "'oracle'"  # the target itself is the problem


@pytest.mark.parametrize(
    ("case", "target", "needle"),
    [
        ("empty", "retrieval", "no impressions"),
        ("foreign", "retrieval", "not written by rayrec"),
        ("cut_part_file", "retrieval", "a truncated log"),
        ("truncated", "retrieval", "a truncated log"),
        ("requests_without_impressions", "retrieval", "have no impressions"),
        ("profile_dims", "retrieval", "profiles have 2 dims but the item embeddings 8"),
        ("unknown_candidates", "retrieval", "not in the item index"),
        ("unknown_logger", "retrieval", "--logger mystery-ranker=POLICY"),
        ("oracle_target", "oracle", "cannot be replayed"),
    ],
)
def test_unusable_logs_are_one_line_errors_naming_the_file(small_log, tmp_path, capsys, case, target, needle):
    events = tmp_path / "events"
    shutil.copytree(small_log, events)
    where = _damage(events, case)
    code, output = cli_output(capsys, "ope", "--events", str(events), "--target", target)
    error = output[output.index("error:") :] if "error:" in output else output
    assert code == 2, output
    assert needle in error and where in error, error
    assert error.strip().count("\n") == 0 and "Traceback" not in output


def test_the_small_log_itself_is_usable(small_log, capsys, tmp_path):
    code, output = cli_output(
        capsys, "ope", "--events", str(small_log), "--target", "retrieval", "--resamples", "100",
        "--logger", "greedy=greedy", "--clip", "5", "--json", str(tmp_path / "o.json"),
    )  # fmt: skip
    assert code == 0, output
    assert "ips_clip" in output and "per user" in output
    assert np.isfinite(float(output.split("sdr")[1].split()[0]))


@pytest.mark.parametrize(
    ("setup", "needle"),
    [
        ("missing", "no such event-log directory"),
        ("no_propensity_column", "propensity"),
        ("nan_propensity", "no usable propensity"),
        ("deterministic", "deterministic"),
        ("no_requests", "no requests table"),
    ],
)
def test_hand_written_impressions_are_one_line_errors(tmp_path, capsys, setup, needle):
    events = tmp_path / "events"
    if setup != "missing":
        columns = {
            "request_id": ["r1", "r1"],
            "ts": [1.0, 1.0],
            "user_id": ["u", "u"],
            "arm": ["a", "a"],
            "policy": ["random", "random"],
            "item_id": ["i1", "i2"],
            "position": pa.array([0, 1], pa.int32()),
            "score": pa.array([0.0, 0.0], pa.float32()),
        }
        propensity = {"nan_propensity": float("nan"), "deterministic": 1.0}.get(setup, 0.05)
        if setup != "no_propensity_column":
            columns["propensity"] = pa.array([propensity, propensity], pa.float32())
        (events / "impressions").mkdir(parents=True)
        pq.write_table(pa.table(columns), events / "impressions" / "part-0001.parquet")
    code, output = cli_output(
        capsys, "ope", "--events", str(events), "--target", "retrieval", "--index", str(tmp_path / "idx")
    )
    assert code == 2 and "\nerror:" in "\n" + output, output
    assert needle in output and str(events) in output
    assert "Traceback" not in output


def test_logged_features_are_named_by_their_number_and_a_mixed_log_keeps_what_every_row_has():
    """A server logs FEATURE_NAMES, and item_rating after them over a rated index: a row's width names its
    features. A log written partly over a rated index (a server restarted on a rebuilt index) keeps the
    features every row has; a width no server writes is one line naming the table."""
    from rayrec.features import FEATURE_NAMES, feature_names
    from rayrec.logs.reader import logged_features

    big_k = 2
    plain = np.arange(big_k * 3, dtype=np.float32)  # [K * 3]: candidate c's features at 3c..3c+2
    rated = np.arange(big_k * 4, dtype=np.float32) + 100  # [K * 4]

    def table(*rows: np.ndarray) -> pa.Table:
        return pa.table({"features": pa.array([r.tolist() for r in rows], pa.list_(pa.float32()))})

    features, names = logged_features(table(rated, rated), big_k, None, "requests")
    assert names == feature_names(rating=True) and features.shape == (2, big_k, 4)
    np.testing.assert_array_equal(features[0], rated.reshape(big_k, 4))
    features, names = logged_features(table(plain, rated, plain), big_k, None, "requests")
    assert names == FEATURE_NAMES
    np.testing.assert_array_equal(features[1], rated.reshape(big_k, 4)[:, :3])
    np.testing.assert_array_equal(features[2], plain.reshape(big_k, 3))
    with pytest.raises(DataError, match=r"requests: column 'features' has 5 values in a row of 2 candidates"):
        logged_features(table(plain, np.zeros(5, np.float32)), big_k, None, "requests")
    with pytest.raises(DataError, match=r"expected 8 \(4 features per candidate\)"):
        logged_features(table(plain), big_k, ("a", "b", "c", "d"), "requests")
