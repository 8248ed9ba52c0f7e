"""The replica's own invariant failures, importable by every part of the replica."""


class ReplicaBug(AssertionError):
    """An invariant of our own code broke (never raised because of what a peer sent)."""
