"""Pseudonymous user ids and scrubbed free text: raw user ids and contact details never leave an import.

User ids become keyed HMAC-SHA256 pseudonyms. Without the key nobody can recompute a pseudonym from
a guessed raw id (plain hashing of small integer ids is reversed by enumeration in a blink); with the
same key the same user gets the same pseudonym on every import, so datasets and event logs join up.
The key comes from ``RAYREC_PSEUDONYM_KEY`` or from a key file created beside the data with 0600
permissions. Keep that file out of anything you share: whoever holds it can test guesses.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat

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
    """The pseudonymization key: ``RAYREC_PSEUDONYM_KEY``, else ``data_dir/pseudonym.key``.

    A missing key file is created with 256 random bits and 0600 permissions, and reused by every
    later import into ``data_dir`` so pseudonyms stay stable. A key file that others can read is
    refused, as ssh refuses such private keys.
    """
    env = os.environ.get(KEY_ENV)
    if env is not None:
        return _checked(env.strip(), KEY_ENV)
    path = storage.join(data_dir, KEY_FILE)
    if storage.exists(path):
        if not storage.is_remote(path):
            mode = stat.S_IMODE(os.stat(storage.local_path(path)).st_mode)
            if mode & 0o077:
                raise ConfigError(
                    f"{path}: the pseudonymization key is readable by others (mode {mode:o}); "
                    f"run `chmod 600 {path}`"
                )
        return _checked(storage.read_text(path).strip(), path)
    key = secrets.token_hex(32)
    if storage.is_remote(path):
        storage.write_text(path, key + "\n")  # permissions on object stores come from the bucket's policy
    else:
        local = storage.local_path(path)
        os.makedirs(os.path.dirname(os.path.abspath(local)), exist_ok=True)
        # O_EXCL: two imports racing into one directory must not each write their own key
        fd = os.open(local, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(key + "\n")
        os.chmod(local, 0o600)  # the umask cannot loosen it, but a pre-set ACL default could
    return key.encode()


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
