"""Deterministic simulation of a PBFT cluster (see `python -m consortium.sim --help`).

Production code never imports this package.
"""
