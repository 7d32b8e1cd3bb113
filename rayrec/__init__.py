"""rayrec: a reinforcement-learning slate recommender on Ray.

The core's public API, for use as a library (``examples/`` shows each in use; docs/api.md lists the rest):

- policies: :class:`SlatePolicy`, :class:`Slate`, :func:`load_policy` (a baseline name or an exported
  policy directory), :data:`BASELINES`;
- metrics: :class:`SessionOutcomes`, :func:`mean_interval`, :func:`paired_difference` and the session
  metrics vocabulary :data:`SESSION_METRICS`;
- data: :class:`WorldConfig`, :func:`write_world` (a synthetic dataset), :class:`ItemIndex`.

The simulator is the ``envs`` package, training is ``trainers``, serving is ``serving``: see
docs/architecture.md for what each layer may import. Names resolve on first use, so ``import rayrec``
stays cheap for the command line.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "BASELINES": "rayrec.baselines",
    "load_policy": "rayrec.baselines",
    "Slate": "rayrec.slate_policy",
    "SlatePolicy": "rayrec.slate_policy",
    "SessionOutcomes": "rayrec.metrics.session",
    "mean_interval": "rayrec.metrics.session",
    "paired_difference": "rayrec.metrics.session",
    "WorldConfig": "rayrec.synth",
    "write_world": "rayrec.synth",
    "ItemIndex": "rayrec.index",
}
_RENAMED = {"SESSION_METRICS": ("rayrec.metrics.session", "METRICS")}

__all__ = ["SESSION_METRICS", "__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    if name in _RENAMED:
        module, attribute = _RENAMED[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'rayrec' has no attribute {name!r}")
