"""What a server or an A/B run logged, read back for learning and evaluation (core: no simulator, no RLlib).

- :mod:`rayrec.logs.reader`: an event log (:mod:`rayrec.events`) checked and turned into
  :class:`rayrec.logs.requests.LoggedRequests`, every ranked request as its ranker saw it;
- :mod:`rayrec.logs.requests`: the logged requests as arrays;
- :mod:`rayrec.logs.mixture`: the logging process of a multi-arm log (mixture propensities, weight
  diagnostics), which off-policy evaluation (:mod:`rayrec.ab`) and offline training (:mod:`trainers`) share.
"""
