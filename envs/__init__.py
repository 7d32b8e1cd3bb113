"""Gymnasium slate simulators and the baseline policies that run in them."""
