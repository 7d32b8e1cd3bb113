"""Local paths and URIs (``s3://``, ``gs://``, ``file://``) behind one small API, via pyarrow filesystems.

On a multi-node cluster every artifact (data, checkpoints, indexes, policies) must live where every node
can read it, so commands take URIs as well as local paths. Libraries that only write local files (FAISS,
``save_pretrained``) go through :func:`local_input_dir` / :func:`local_output_dir`, which stage a remote
directory in a temporary local one and copy it back.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pyarrow.fs as pafs

from rayrec.errors import RayrecError


def is_remote(uri: str | Path) -> bool:
    """True for URIs whose filesystem is not this machine's (``s3://``, ``gs://``, ...)."""
    text = str(uri)
    return "://" in text and not text.startswith("file://")


def local_path(uri: str | Path) -> str:
    """The local path of a plain path or ``file://`` URI."""
    text = str(uri)
    return text[len("file://") :] if text.startswith("file://") else text


def resolve(uri: str | Path) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and the path inside it for ``uri``."""
    if not is_remote(uri):
        return pafs.LocalFileSystem(), str(Path(local_path(uri)).expanduser().absolute())
    try:
        return pafs.FileSystem.from_uri(str(uri))
    except (OSError, ValueError) as exc:  # pyarrow.ArrowInvalid is a ValueError
        raise RayrecError(f"cannot open storage {uri!r}: {exc}") from None


def join(base: str | Path, *parts: str) -> str:
    """Join path parts onto a local path or URI."""
    text = str(base).rstrip("/")
    return "/".join([text, *parts]) if is_remote(text) else str(Path(local_path(text)).joinpath(*parts))


def exists(uri: str | Path) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def makedirs(uri: str | Path) -> None:
    fs, path = resolve(uri)
    fs.create_dir(path, recursive=True)


def read_bytes(uri: str | Path) -> bytes:
    fs, path = resolve(uri)
    try:
        with fs.open_input_stream(path) as stream:
            return stream.read()
    except FileNotFoundError:
        raise RayrecError(f"{uri}: no such file") from None
    except OSError as exc:  # a directory, no permission, a storage error
        raise RayrecError(f"cannot read {uri}: {exc}") from None


def write_bytes(uri: str | Path, data: bytes) -> None:
    fs, path = resolve(uri)
    try:
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(path) as stream:
            stream.write(data)
    except OSError as exc:
        raise RayrecError(f"cannot write {uri}: {exc}") from None


def read_text(uri: str | Path) -> str:
    return read_bytes(uri).decode("utf-8")


def write_text(uri: str | Path, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


@contextlib.contextmanager
def local_input_dir(uri: str | Path) -> Iterator[Path]:
    """A local directory with the contents of ``uri`` (the directory itself when it is local)."""
    if not is_remote(uri):
        path = Path(local_path(uri)).expanduser()
        if not path.is_dir():
            raise RayrecError(f"{uri}: no such directory")
        yield path
        return
    fs, path = resolve(uri)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        raise RayrecError(f"{uri}: no such directory")
    with tempfile.TemporaryDirectory(prefix="rayrec-in-") as tmp:
        pafs.copy_files(path, tmp, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        yield Path(tmp)


@contextlib.contextmanager
def local_output_dir(uri: str | Path) -> Iterator[Path]:
    """A local directory whose contents end up at ``uri`` when the block exits without error."""
    if not is_remote(uri):
        path = Path(local_path(uri)).expanduser()
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    tmp = Path(tempfile.mkdtemp(prefix="rayrec-out-"))
    try:
        yield tmp
        upload_dir(tmp, uri)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def upload_dir(local: str | Path, uri: str | Path) -> None:
    """Copy the local directory ``local`` (recursively) to ``uri``, replacing files of the same name."""
    fs, path = resolve(uri)
    try:
        fs.create_dir(path, recursive=True)
        pafs.copy_files(
            str(Path(local).absolute()),
            path,
            source_filesystem=pafs.LocalFileSystem(),
            destination_filesystem=fs,
        )
    except OSError as exc:
        raise RayrecError(f"cannot write {uri}: {exc}") from None
