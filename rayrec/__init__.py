"""rayrec: a reinforcement-learning slate recommender on Ray."""

__version__ = "0.1.0"
