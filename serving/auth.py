"""API keys: a file of SHA-256 hashes with scopes, checked on every request by :mod:`serving.guard`.

The file (YAML; ``rayrec api-key add FILE --id NAME --scopes recommend,feedback`` makes entries and
prints the new key once; ``rayrec api-key revoke`` and ``list`` do the rest)::

    keys:
      - id: web-frontend            # a name for logs and errors; never secret
        sha256: 5d41402abc4b2a76...  # of the key itself; the key is shown once, when it is made
        scopes: [recommend, feedback]
      - id: ops
        sha256: ...
        scopes: [admin]

A key is ``rr_`` and 43 URL-safe characters (256 random bits). Such keys are too random to guess or to
brute-force from their hash, so a plain SHA-256 (rather than a slow password hash) is the right check:
one hash per request, then a dictionary look-up. Whoever reads the file learns the key ids and scopes,
not the keys. The file is read again when it changes (at most every :data:`RELOAD_EVERY_S`): a key is
added or revoked without restarting the server, e.g. when Kubernetes updates a mounted Secret.

Scopes: ``recommend`` (``POST /recommend``), ``feedback`` (``POST /feedback``), ``admin`` (the details
of ``GET /healthz``). ``/healthz``, ``/docs`` and ``/openapi.json`` need no key.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from rayrec.errors import ConfigError

SCOPES = frozenset({"recommend", "feedback", "admin"})
KEY_PREFIX = "rr_"
KEY_ID = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
MAX_KEY_CHARS = 200
RELOAD_EVERY_S = 5.0


@dataclass(frozen=True)
class ApiKey:
    """A known key: its id (a name, not the secret) and scopes."""

    key_id: str
    scopes: frozenset[str]


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    """A fresh random API key (256 bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def parse_scopes(text: str) -> frozenset[str]:
    scopes = frozenset(s.strip() for s in text.split(",") if s.strip())
    unknown = sorted(scopes - SCOPES)
    if not scopes or unknown:
        raise ConfigError(f"API key scopes must be some of {sorted(SCOPES)}, got {text!r}")
    return scopes


def read_key_file(path: str) -> dict[str, ApiKey]:
    """sha256 → :class:`ApiKey` from a key file; ConfigError naming the entry for anything malformed."""
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"API key file {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"API key file {path}: not YAML ({type(exc).__name__})") from None
    entries = raw.get("keys") if isinstance(raw, dict) else None
    if not isinstance(entries, list):
        raise ConfigError(f"API key file {path}: expected a top-level `keys:` list")
    keys: dict[str, ApiKey] = {}
    ids: set[str] = set()
    for i, entry in enumerate(entries):
        where = f"API key file {path}, entry {i}"
        if not isinstance(entry, dict) or set(entry) - {"id", "sha256", "scopes", "created"}:
            raise ConfigError(f"{where}: expected id, sha256, scopes (and optionally created)")
        key_id, digest, scopes = str(entry.get("id", "")), str(entry.get("sha256", "")), entry.get("scopes")
        if not KEY_ID.match(key_id) or key_id in ids:
            raise ConfigError(f"{where}: id must be unique and match {KEY_ID.pattern}")
        if not SHA256_HEX.match(digest) or digest in keys:
            raise ConfigError(f"{where} ({key_id}): sha256 must be 64 lowercase hex digits, once per file")
        if not isinstance(scopes, list) or not scopes:
            raise ConfigError(f"{where} ({key_id}): scopes must be a non-empty list")
        ids.add(key_id)
        keys[digest] = ApiKey(key_id, parse_scopes(",".join(map(str, scopes))))
    return keys


class KeyRing:
    """The keys of one file, re-read when the file changes.

    Args:
        path: the key file (a local path, e.g. a mounted Kubernetes Secret).
    """

    def __init__(self, path: str) -> None:
        self.path = str(path)
        self._keys = read_key_file(self.path)
        self._stamp = self._file_stamp()
        self._checked = time.monotonic()
        self._lock = threading.Lock()
        self.reload_error: str | None = None

    def __len__(self) -> int:
        return len(self._keys)

    def authenticate(self, authorization: str) -> ApiKey | None:
        """The key of an ``Authorization`` header value (``Bearer KEY``), or None."""
        self._maybe_reload()
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or len(token) > MAX_KEY_CHARS:
            return None
        return self._keys.get(hash_key(token))

    def _file_stamp(self) -> tuple[float, int] | None:
        try:
            info = os.stat(self.path)
        except OSError:
            return None
        return info.st_mtime, info.st_size

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if now - self._checked < RELOAD_EVERY_S or not self._lock.acquire(blocking=False):
            return
        try:
            self._checked = now
            stamp = self._file_stamp()
            if stamp == self._stamp or stamp is None:
                return  # unchanged, or briefly missing while a Secret is swapped: keep the keys we have
            try:
                self._keys, self._stamp, self.reload_error = read_key_file(self.path), stamp, None
            except ConfigError as exc:  # a bad edit keeps the last good keys (and says so in health)
                self.reload_error = str(exc)
        finally:
            self._lock.release()


def _entries(path: str) -> list[dict]:
    target = Path(path)
    if not target.exists():
        return []
    read_key_file(path)  # refuse to edit a file that does not read back
    return list((yaml.safe_load(target.read_text()) or {}).get("keys") or [])


def _write_entries(path: str, entries: list[dict]) -> None:
    """Replace the key file atomically (a temporary file renamed over it, mode 0600)."""
    target = Path(path)
    text = "# rayrec API keys: SHA-256 hashes only (see docs/operations.md)\n" + yaml.safe_dump(
        {"keys": entries}, sort_keys=False
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def list_keys(path: str) -> list[dict]:
    """The file's entries (id, scopes, created; never a key)."""
    return [{k: e[k] for k in ("id", "scopes", "created") if k in e} for e in _entries(path)]


def revoke_key(path: str, key_id: str) -> None:
    """Remove the key ``key_id``; servers stop accepting it within :data:`RELOAD_EVERY_S`."""
    entries = _entries(path)
    kept = [e for e in entries if str(e.get("id")) != key_id]
    if len(kept) == len(entries):
        raise ConfigError(f"{path}: no API key with id {key_id!r}")
    _write_entries(path, kept)


def add_key(path: str, key_id: str, scopes: frozenset[str]) -> str:
    """Make a key with ``scopes``, add its hash to the key file (created 0600 if missing), return the key.

    The file is replaced atomically (a temporary file renamed over it), so a server reading it never
    sees half of it.
    """
    if not KEY_ID.match(key_id):
        raise ConfigError(f"API key id {key_id!r} must match {KEY_ID.pattern}")
    entries = _entries(path)
    if any(str(e.get("id")) == key_id for e in entries):
        raise ConfigError(f"{path}: an API key with id {key_id!r} exists; revoke it first or pick another id")
    key = new_key()
    entries.append(
        {
            "id": key_id,
            "sha256": hash_key(key),
            "scopes": sorted(scopes),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
    )
    _write_entries(path, entries)
    read_key_file(path)  # what was written must read back
    return key
