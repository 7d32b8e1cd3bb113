"""A/B arm assignment by a salted hash of the user id.

The server and the simulated A/B runner call the same function, so a user lands in the same arm in
simulation, in production, across requests and across restarts. The server hashes the user id as the
client sent it (not its pseudonym), with the experiment's salt: rotating the pseudonymization key or
moving the event log leaves every user in their arm, and only a new salt re-randomises users. The arm
reveals nothing usable about the id (one of a few values).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from rayrec.errors import ConfigError

DEFAULT_SALT = "rayrec-ab-v1"
ARM_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True)
class Arm:
    """One A/B arm: a name users see in answers, a policy spec (a baseline name or a trained policy
    directory, as :func:`rayrec.baselines.load_policy` takes), a weight."""

    name: str
    policy: str
    weight: float = 1.0


def parse_arm(spec: str) -> Arm:
    """``NAME=POLICY[:WEIGHT]`` → :class:`Arm` (POLICY is a baseline name or a policy directory)."""
    name, sep, rest = spec.partition("=")
    if not sep or not rest:
        raise ConfigError(f"arm {spec!r}: expected NAME=POLICY[:WEIGHT]")
    policy, weight = rest, 1.0
    head, colon, tail = rest.rpartition(":")
    if colon and head:
        with contextlib.suppress(ValueError):  # else the ':' belongs to a policy path or URI
            policy, weight = head, float(tail)
    if not ARM_NAME.match(name):
        raise ConfigError(f"arm {spec!r}: name must match {ARM_NAME.pattern}")
    return Arm(name=name, policy=policy, weight=weight)


def validate_arms(arms: Sequence[tuple[str, float]]) -> None:
    """Arms need distinct names and positive weights."""
    if not arms:
        raise ConfigError("at least one arm is needed")
    names = [name for name, _ in arms]
    if len(set(names)) != len(names):
        raise ConfigError(f"arm names must be distinct, got {names}")
    bad = [name for name, weight in arms if not weight > 0]
    if bad:
        raise ConfigError(f"arm weights must be positive: {bad}")


def bucket(user_id: str, salt: str = DEFAULT_SALT) -> float:
    """A uniform number in [0, 1) fixed by (salt, user_id)."""
    digest = hashlib.sha256(f"{salt}:{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign_arm(user_id: str, arms: Sequence[tuple[str, float]], salt: str = DEFAULT_SALT) -> str:
    """The arm of ``user_id``: arms own consecutive slices of [0, 1) in proportion to their weights."""
    total = sum(weight for _, weight in arms)
    point = bucket(user_id, salt) * total
    for name, weight in arms:
        point -= weight
        if point < 0:
            return name
    return arms[-1][0]
