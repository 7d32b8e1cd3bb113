"""Pseudonymization (keyed, stable, never leaking raw ids) and free-text scrubbing."""

from __future__ import annotations

import os
import stat

import pyarrow as pa
import pytest
from data_samples import ML100K_USERS, leaks, write_ml100k, write_ml_latest

from rayrec.data.io import load_dataset
from rayrec.data.mapped_import import import_table, parse_mapping
from rayrec.data.movielens import import_movielens
from rayrec.errors import ConfigError, DataError
from rayrec.privacy import (
    KEY_ENV,
    KEY_FILE,
    KEY_FILE_ENV,
    Pseudonymizer,
    key_id,
    load_key,
    load_or_create_key,
    resolve_key_source,
    scrub_array,
    scrub_text,
)


@pytest.fixture(autouse=True)
def no_env_key(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)


def test_pseudonyms_are_stable_and_keyed():
    first, same, other = Pseudonymizer(b"k" * 32), Pseudonymizer(b"k" * 32), Pseudonymizer(b"j" * 32)
    assert first.pseudonymize("42") == same.pseudonymize("42")
    assert first.pseudonymize("42") != other.pseudonymize("42")
    assert first.pseudonymize("42") != first.pseudonymize("43")
    assert len(first.pseudonymize("42")) == 32 and "42" not in first.pseudonymize("42")
    column = first.pseudonymize_array(pa.chunked_array([["42", "7"], ["42", None]]))
    assert column.to_pylist() == [
        first.pseudonymize("42"),
        first.pseudonymize("7"),
        first.pseudonymize("42"),
        None,
    ]
    with pytest.raises(ConfigError):
        Pseudonymizer(b"short")


def test_key_file_created_0600_and_reused(tmp_path):
    key = load_or_create_key(str(tmp_path / "data"))
    path = tmp_path / "data" / KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(key) == 64
    assert load_or_create_key(str(tmp_path / "data")) == key
    assert load_or_create_key(str(tmp_path / "elsewhere")) != key


def test_key_file_readable_by_others_is_refused(tmp_path):
    load_or_create_key(str(tmp_path))
    os.chmod(tmp_path / KEY_FILE, 0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        load_or_create_key(str(tmp_path))


def test_env_key_wins_and_must_be_long_enough(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "an-environment-key-of-some-length")
    assert load_or_create_key(str(tmp_path)) == b"an-environment-key-of-some-length"
    assert not (tmp_path / KEY_FILE).exists()
    monkeypatch.setenv(KEY_ENV, "short")
    with pytest.raises(ConfigError, match=KEY_ENV):
        load_or_create_key(str(tmp_path))


def user_ids(out) -> list[str]:
    return load_dataset(str(out)).interactions.column("user_id").to_pylist()


def test_imports_keep_ids_stable_per_key(tmp_path, monkeypatch):
    source = write_ml100k(tmp_path / "src")
    import_movielens(str(source), str(tmp_path / "a"))
    first = user_ids(tmp_path / "a")
    import_movielens(str(source), str(tmp_path / "a"))  # re-import reuses a/pseudonym.key
    assert user_ids(tmp_path / "a") == first
    import_movielens(str(source), str(tmp_path / "b"))  # another directory, another key
    assert set(user_ids(tmp_path / "b")).isdisjoint(first)
    monkeypatch.setenv(KEY_ENV, "one-key-for-every-dataset-here")
    import_movielens(str(source), str(tmp_path / "c"))
    import_movielens(str(source), str(tmp_path / "d"))
    assert user_ids(tmp_path / "c") == user_ids(tmp_path / "d")
    assert len(set(user_ids(tmp_path / "c"))) == len(ML100K_USERS)


def test_no_raw_id_in_any_output_file_or_error(tmp_path):
    raw = ["alice.smith@example.com", "secret-user-7781"]
    log = tmp_path / "log.csv"
    log.write_text(f"user,item_id,timestamp\n{raw[0]},i1,1\n{raw[1]},i2,2\n{raw[1]},i1,3\n")
    out = tmp_path / "out"
    import_table(str(log), str(out), mapping=parse_mapping(["user_id=user"]))
    assert leaks(out, raw) == []
    assert sorted(os.listdir(out)) == ["interactions.parquet", "items.parquet", KEY_FILE]
    bad = tmp_path / "bad.csv"
    bad.write_text(f"user,item_id,timestamp\n{raw[1]},i1,later\n")
    with pytest.raises(DataError) as excinfo:
        import_table(str(bad), str(tmp_path / "out2"), mapping=parse_mapping(["user_id=user"]))
    assert raw[1] not in str(excinfo.value)
    bad.write_text(f"user,item_id,timestamp\n{raw[1]},i1,1,extra\n")
    with pytest.raises(DataError, match="expected 3 fields, found 4") as excinfo:
        import_table(str(bad), str(tmp_path / "out2"), mapping=parse_mapping(["user_id=user"]))
    assert raw[1] not in str(excinfo.value)


def test_movielens_user_ids_must_be_integers_and_are_not_shown(tmp_path):
    source = write_ml_latest(tmp_path / "src", ratings_lines=("private-name,1,4.0,1260759200",))
    with pytest.raises(DataError, match=r"row 4 \(line 5\), column 'userId': not an integer id") as excinfo:
        import_movielens(str(source), str(tmp_path / "out"))
    assert "private-name" not in str(excinfo.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mail me at john.doe@example.co.uk please", "mail me at please"),
        ("see https://x.org/a?b=c and www.foo.com too", "see and too"),
        ("call +1 (555) 123-4567 now", "call now"),
        ("office 555-123-4567 or (555) 765-4321", "office or"),
        ("uk 07700 900123 and +44 20 7946 0958", "uk and"),
        (
            "1990-1999 classics, 2001: A Space Odyssey (1968)",
            "1990-1999 classics, 2001: A Space Odyssey (1968)",
        ),
        ("rated 4.5 by 1,000 fans on 2015-12-31", "rated 4.5 by 1,000 fans on 2015-12-31"),
    ],
)
def test_scrub_text(text, expected):
    assert scrub_text(text) == expected


def test_scrub_array_keeps_nulls():
    assert scrub_array(pa.array(["a@b.io x", None])).to_pylist() == ["x", None]


def _race_for_key(args) -> bytes:
    path, barrier = args
    barrier.wait()  # every process tries to create the key at the same moment
    return load_key(path, create=True)


def test_a_server_key_is_created_atomically_even_by_racing_processes(tmp_path):
    import multiprocessing

    path = str(tmp_path / "secrets" / KEY_FILE)
    context = multiprocessing.get_context("fork")
    with context.Manager() as manager:
        barrier = manager.Barrier(8)
        with context.Pool(8) as pool:
            keys = pool.map(_race_for_key, [(path, barrier)] * 8)
    assert len(set(keys)) == 1 and len(keys[0]) == 64, "racing creators must agree on one key"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert os.listdir(tmp_path / "secrets") == [KEY_FILE]  # no temporary file left behind
    assert load_key(path) == keys[0]


def test_where_a_server_key_comes_from(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv(KEY_FILE_ENV, raising=False)
    assert resolve_key_source() == str(tmp_path / "config" / "rayrec" / KEY_FILE)  # never a data directory
    with pytest.raises(ConfigError, match="no pseudonymization key file"):
        load_key(resolve_key_source())  # a replica never makes its own key
    made = load_key(resolve_key_source(), create=True)
    secret = tmp_path / "mounted-secret"
    secret.write_text("a-key-from-a-kubernetes-secret\n")
    secret.chmod(0o600)
    monkeypatch.setenv(KEY_FILE_ENV, str(secret))
    assert load_key(resolve_key_source()) == b"a-key-from-a-kubernetes-secret"
    assert resolve_key_source(str(tmp_path / "explicit.key")) == str(tmp_path / "explicit.key")
    monkeypatch.setenv(KEY_ENV, "the-key-itself-from-the-environment")
    assert resolve_key_source(str(secret)) == f"env:{KEY_ENV}"
    assert load_key(resolve_key_source()) == b"the-key-itself-from-the-environment"
    assert made != b"the-key-itself-from-the-environment"


def test_key_ids_name_keys_without_revealing_them():
    first, second = b"k" * 32, b"j" * 32
    assert key_id(first) == key_id(first) != key_id(second)
    assert len(key_id(first)) == 12 and "kkkk" not in key_id(first)
