"""Simulated A/B tests and off-policy evaluation, with the statistics to read them honestly.

Modules, one job each:

- :mod:`rayrec.ab.metrics`: per-user outcomes (the randomisation unit).
- :mod:`rayrec.ab.stats`: Welch and bootstrap lifts with intervals and p-values, the SRM check.
- :mod:`rayrec.ab.sequential`: always-valid monitoring (mSPRT).
- :mod:`rayrec.ab.plan`: sample size for a minimum detectable effect.
- :mod:`rayrec.ab.simulate`: in-process experiments sharded over Ray tasks.
- :mod:`rayrec.ab.http_client`: experiments against a running server (``--url``).
- :mod:`rayrec.ab.analysis`, :mod:`rayrec.ab.report`, :mod:`rayrec.ab.plots`: the report.
- :mod:`rayrec.ab.ope`, :mod:`rayrec.ab.reward_model`, :mod:`rayrec.logs.reader`: IPS, SNIPS, DM, DR
  (replaying the requests table of :mod:`rayrec.events`).
- :mod:`rayrec.ab.config`, :mod:`rayrec.ab.experiment`, :mod:`rayrec.ab.offline`: the commands' configs
  and their end-to-end runs.
"""
