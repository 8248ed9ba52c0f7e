"""Quorum arithmetic for n = 3f + 1 (kept apart so that it can be checked on its own)."""

from __future__ import annotations


def faults_tolerated(n: int) -> int:
    """f: the most Byzantine replicas a group of n tolerates (n >= 3f + 1)."""
    if n < 1:
        raise ValueError("a group has at least one replica")
    return (n - 1) // 3


def quorum(n: int) -> int:
    """2f + 1 out of n: any two quorums share at least f + 1 replicas, hence one honest one.

    For n that is not 3f + 1 (say 5), the quorum is the smallest q with 2q - n > f, which keeps
    the intersection property: ceil((n + f + 1) / 2).
    """
    f = faults_tolerated(n)
    return (n + f + 2) // 2


def weak_quorum(n: int) -> int:
    """f + 1: enough replicas that at least one of them is honest."""
    return faults_tolerated(n) + 1
