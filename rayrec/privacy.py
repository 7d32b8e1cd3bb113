"""Pseudonymous user ids and scrubbed free text: raw user ids and contact details never leave an import.

User ids become keyed HMAC-SHA256 pseudonyms. Without the key nobody can recompute a pseudonym from
a guessed raw id (plain hashing of small integer ids is reversed by enumeration in a blink); with the
same key the same user gets the same pseudonym on every import, so datasets and event logs join up.
An import takes the key from ``RAYREC_PSEUDONYM_KEY`` or from a key file created beside the data with
0600 permissions (:func:`load_or_create_key`). The server keeps its key apart from its data and events
(:func:`load_key`: the environment, a key file such as a mounted Kubernetes Secret, or the user's
config directory), and writes the key's public id (:func:`key_id`) on every event row. Keep key files
out of anything you share: whoever holds a key can test guesses.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import stat
import tempfile

import pyarrow as pa
import pyarrow.compute as pc

from rayrec import storage
from rayrec.errors import ConfigError

KEY_ENV = "RAYREC_PSEUDONYM_KEY"
KEY_FILE = "pseudonym.key"
MIN_KEY_LENGTH = 16
"""Characters a key needs at least; a generated key has 64 (256 random bits as hex)."""
PSEUDONYM_HEX_CHARS = 32
"""128 bits of the HMAC: collisions among even a billion users have odds below 1e-20."""

_URL = r"(?:https?://|ftp://|www\.)[^\s<>\"']+"
_EMAIL = r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
_PHONE = "|".join(
    [
        r"\+\d{1,3}[\s.-]?\(?\d{1,4}\)?(?:[\s.-]?\d{2,4}){2,4}",  # +44 20 7946 0958, +1-555-123-4567
        r"\(\d{2,4}\)\s?\d{3,4}[\s.-]?\d{3,4}",  # (555) 123-4567
        r"\b\d{2,5}[\s.-]\d{3,4}[\s.-]\d{3,4}\b",  # 555-123-4567, 555.123.4567
        r"\b0\d{4}\s?\d{6}\b",  # 07700 900123
    ]
)
SCRUB_PATTERN = f"{_URL}|{_EMAIL}|{_PHONE}"
"""URLs first, so the ``user@host`` inside a URL goes with the URL. Years and ranges such as
``1990-1999`` are not phone numbers: a match needs a ``+``, an area code in brackets, three digit
groups, or a national trunk prefix. The pattern is valid for both Python ``re`` and RE2 (Arrow)."""


def load_or_create_key(data_dir: str) -> bytes:
    """The pseudonymization key of a dataset import: ``RAYREC_PSEUDONYM_KEY``, else
    ``data_dir/pseudonym.key`` (created on first use, atomically, 0600; reused by later imports into
    ``data_dir`` so that pseudonyms stay stable). A key file that others can read is refused, as ssh
    refuses such private keys. The server keeps its key apart from its data: :func:`load_key`.
    """
    env = os.environ.get(KEY_ENV)
    if env is not None:
        return _checked(env.strip(), KEY_ENV)
    path = storage.join(data_dir, KEY_FILE)
    if storage.is_remote(path) and not storage.exists(path):
        storage.write_text(path, secrets.token_hex(32) + "\n")  # access comes from the bucket's policy
    return _key_from_file(path, create=True)


KEY_FILE_ENV = "RAYREC_PSEUDONYM_KEY_FILE"
"""A path to the key file (e.g. a mounted Kubernetes Secret), when the key is not in ``RAYREC_PSEUDONYM_KEY``."""


def default_key_path() -> str:
    """``$XDG_CONFIG_HOME/rayrec/pseudonym.key`` (``~/.config/rayrec/pseudonym.key``): this user's key,
    apart from every data and events directory."""
    config_home = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(config_home, "rayrec", KEY_FILE)


def resolve_key_source(path: str | None = None) -> str:
    """Where the key comes from: ``env:RAYREC_PSEUDONYM_KEY``, else the key file ``path``, else
    ``RAYREC_PSEUDONYM_KEY_FILE``, else :func:`default_key_path` (an absolute path)."""
    if os.environ.get(KEY_ENV) is not None:
        return f"env:{KEY_ENV}"
    chosen = path or os.environ.get(KEY_FILE_ENV) or default_key_path()
    return chosen if storage.is_remote(chosen) else os.path.abspath(os.path.expanduser(chosen))


def load_key(source: str, create: bool = False) -> bytes:
    """The key of a source from :func:`resolve_key_source`.

    Args:
        create: make a local key file that does not exist yet (atomically: of processes racing to create
            it, all end up with the one that won). Servers create it once, where the application is
            built, and their replicas load it with ``create=False``, so that two replicas can never
            hold different keys: a replica that cannot see the file fails instead.

    Raises:
        ConfigError: no key there (and not created), a key readable by others, a key too short, or a
            remote key file that does not exist (keys are never created in object stores: use a
            Secret or ``RAYREC_PSEUDONYM_KEY``).
    """
    if source.startswith("env:"):
        value = os.environ.get(source[4:])
        if value is None:
            raise ConfigError(f"{source[4:]} is not set in this process's environment")
        return _checked(value.strip(), source[4:])
    return _key_from_file(source, create=create)


def _key_from_file(path: str, create: bool) -> bytes:
    if storage.is_remote(path):
        if not storage.exists(path):
            raise ConfigError(
                f"{path}: no pseudonymization key there; keys are not created in object stores: put one "
                f"there yourself, or use {KEY_ENV} (a Kubernetes Secret)"
            )
        return _checked(storage.read_text(path).strip(), path)
    local = storage.local_path(path)
    if not os.path.exists(local):
        if not create:
            raise ConfigError(
                f"{path}: no pseudonymization key file; create it where the application is built, mount "
                f"the same Secret on every node, or set {KEY_ENV}"
            )
        _create_key_file(local)
    mode = stat.S_IMODE(os.stat(local).st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"{path}: the pseudonymization key is readable by others (mode {mode:o}); run `chmod 600 {path}`"
        )
    with open(local) as handle:
        return _checked(handle.read().strip(), path)


def _create_key_file(path: str) -> None:
    """A new random key at ``path``, created atomically: written whole to a private temporary file and
    hard-linked into place, which fails if another process got there first (then its key stands). No
    reader ever sees a partial key, and two creators never end up with different keys."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{KEY_FILE}.", dir=directory)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o600)  # mkstemp makes it 0600; a default ACL could loosen it
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        os.unlink(tmp)


def key_id(key: bytes) -> str:
    """A short public name of a key (logged on every event row): tells which key made a pseudonym, and
    reveals nothing of the key (a hash of it with a fixed label)."""
    return "k" + hashlib.sha256(b"rayrec-pseudonym-key-id:" + key).hexdigest()[:11]


def _checked(key: str, origin: str) -> bytes:
    if len(key) < MIN_KEY_LENGTH:
        raise ConfigError(f"{origin}: a pseudonymization key needs at least {MIN_KEY_LENGTH} characters")
    return key.encode()


class Pseudonymizer:
    """Keyed HMAC-SHA256 pseudonyms of raw user ids (hex, :data:`PSEUDONYM_HEX_CHARS` characters)."""

    def __init__(self, key: bytes) -> None:
        if len(key) < MIN_KEY_LENGTH:
            raise ConfigError(f"a pseudonymization key needs at least {MIN_KEY_LENGTH} bytes")
        self._key = key

    def pseudonymize(self, raw_id: str) -> str:
        digest = hmac.new(self._key, str(raw_id).encode(), hashlib.sha256).hexdigest()
        return digest[:PSEUDONYM_HEX_CHARS]

    def pseudonymize_array(self, raw_ids: pa.Array | pa.ChunkedArray) -> pa.Array:
        """Pseudonyms of a column [n]: one HMAC per distinct id, not per row; nulls stay null."""
        raw_ids = raw_ids.combine_chunks() if isinstance(raw_ids, pa.ChunkedArray) else raw_ids
        encoded = pc.dictionary_encode(pc.cast(raw_ids, pa.string()))
        pseudonyms = pa.array([self.pseudonymize(raw) for raw in encoded.dictionary.to_pylist()], pa.string())
        return pc.take(pseudonyms, encoded.indices)


def scrub_array(texts: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Free text [n] without e-mail addresses, phone numbers and URLs, whitespace tidied; nulls stay."""
    texts = texts.combine_chunks() if isinstance(texts, pa.ChunkedArray) else texts
    removed = pc.replace_substring_regex(texts, SCRUB_PATTERN, "")
    return pc.utf8_trim_whitespace(pc.replace_substring_regex(removed, r"\s{2,}", " "))


def scrub_text(text: str) -> str:
    """``text`` without e-mail addresses, phone numbers and URLs (same rules as :func:`scrub_array`)."""
    return scrub_array(pa.array([text], pa.string()))[0].as_py()
