"""rayrec.storage: one API over local paths and ``file://`` URIs (and the errors users see)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from rayrec import storage
from rayrec.errors import RayrecError


def uri(path: Path) -> str:
    return path.as_uri()  # file:///abs/path


@pytest.mark.parametrize("as_uri", [False, True], ids=["path", "file-uri"])
def test_text_and_bytes_round_trip_creates_parent_directories(tmp_path: Path, as_uri: bool):
    base = uri(tmp_path) if as_uri else str(tmp_path)
    text_target = storage.join(base, "deep", "er", "note.txt")
    storage.write_text(text_target, "héllo\nworld")
    assert storage.read_text(text_target) == "héllo\nworld"
    assert (tmp_path / "deep" / "er" / "note.txt").read_text(encoding="utf-8") == "héllo\nworld"

    blob = bytes(range(256)) * 3
    bytes_target = storage.join(base, "blob.bin")
    storage.write_bytes(bytes_target, blob)
    assert storage.read_bytes(bytes_target) == blob
    storage.write_bytes(bytes_target, b"replaced")
    assert storage.read_bytes(bytes_target) == b"replaced"


def test_uris_and_paths_name_the_same_files(tmp_path: Path):
    storage.write_text(str(tmp_path / "a.txt"), "via path")
    assert storage.read_text(uri(tmp_path / "a.txt")) == "via path"
    assert storage.exists(uri(tmp_path / "a.txt"))
    assert storage.exists(str(tmp_path))
    assert not storage.exists(uri(tmp_path / "missing.txt"))
    fs, path = storage.resolve(uri(tmp_path / "a.txt"))
    assert isinstance(fs, pafs.LocalFileSystem)
    assert path == str(tmp_path / "a.txt")


def test_relative_paths_resolve_against_the_working_directory(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    storage.write_text("rel/x.txt", "relative")
    assert (tmp_path / "rel" / "x.txt").read_text() == "relative"
    assert storage.resolve("rel/x.txt")[1] == str(tmp_path / "rel" / "x.txt")


def test_join_keeps_remote_schemes_and_local_paths():
    assert storage.join("s3://bucket/runs/", "enc", "model") == "s3://bucket/runs/enc/model"
    assert storage.join("gs://bucket", "index") == "gs://bucket/index"
    assert storage.join("/data/runs", "x") == "/data/runs/x"
    assert storage.join("file:///data/runs", "x") == "/data/runs/x"
    assert storage.is_remote("s3://b/k") and storage.is_remote("gs://b/k")
    assert not storage.is_remote("file:///tmp/x") and not storage.is_remote("/tmp/x")


def test_makedirs_is_idempotent(tmp_path: Path):
    target = uri(tmp_path / "a" / "b" / "c")
    storage.makedirs(target)
    storage.makedirs(target)
    assert (tmp_path / "a" / "b" / "c").is_dir()


def test_parquet_through_the_resolved_filesystem(tmp_path: Path):
    table = pa.table({"item_id": ["a", "b"], "value": pa.array([1.0, 2.5], pa.float32())})
    fs, path = storage.resolve(uri(tmp_path / "t.parquet"))
    pq.write_table(table, path, filesystem=fs)
    assert pq.read_table(path, filesystem=fs).equals(table)


def test_local_input_dir_yields_the_directory_itself(tmp_path: Path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "weights.bin").write_bytes(b"w")
    for spec in (str(tmp_path / "model"), uri(tmp_path / "model")):
        with storage.local_input_dir(spec) as local:
            assert local == tmp_path / "model"
            assert (local / "weights.bin").read_bytes() == b"w"


def test_local_output_dir_creates_and_keeps_what_was_written(tmp_path: Path):
    target = tmp_path / "out" / "index"
    with storage.local_output_dir(uri(target)) as local:
        assert local.is_dir()
        (local / "items.faiss").write_bytes(b"faiss")
    assert (target / "items.faiss").read_bytes() == b"faiss"
    with storage.local_input_dir(str(target)) as again:
        assert sorted(p.name for p in again.iterdir()) == ["items.faiss"]


def test_missing_paths_are_clear_errors(tmp_path: Path):
    with pytest.raises(RayrecError, match="no such file"):
        storage.read_bytes(str(tmp_path / "nope.bin"))
    with pytest.raises(RayrecError, match="no such file"):
        storage.read_text(uri(tmp_path / "nope.txt"))
    with (
        pytest.raises(RayrecError, match="no such directory"),
        storage.local_input_dir(uri(tmp_path / "gone")),
    ):
        pass
    (tmp_path / "file.txt").write_text("x")
    with (
        pytest.raises(RayrecError, match="no such directory"),
        storage.local_input_dir(str(tmp_path / "file.txt")),
    ):
        pass


def test_missing_remote_directory_is_a_clear_error_before_staging():
    # pyarrow's in-memory filesystem (``mock://``) starts empty: the remote branch must say what is missing.
    with (
        pytest.raises(RayrecError, match="no such directory"),
        storage.local_input_dir("mock:///bucket/model"),
    ):
        pass
    assert not storage.exists("mock:///bucket/model")


def test_reading_or_writing_a_directory_as_a_file_is_a_clear_error(tmp_path: Path):
    with pytest.raises(RayrecError, match="cannot read"):
        storage.read_bytes(str(tmp_path))
    with pytest.raises(RayrecError, match="cannot write"):
        storage.write_text(str(tmp_path), "x")


def test_unknown_scheme_is_a_clear_error():
    with pytest.raises(RayrecError, match="cannot open storage 'nosuch://bucket/x'"):
        storage.resolve("nosuch://bucket/x")
