"""Training entry points: ``python -m trainers.encoder`` (Ray Train) and ``python -m trainers.policy`` (RLlib)."""
