"""Protocol parameters. Every limit is named with its unit last."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ProtocolParams:
    """Tunables of one consortium. All replicas must use the same values (they are in genesis)."""

    checkpoint_interval: int = 64
    """K: a checkpoint is taken every K sequence numbers."""
    log_window: int = 128
    """L: the high watermark is the last stable checkpoint + L (the paper's log size)."""
    pipeline_depth: int = 8
    """How many sequence numbers the primary keeps in flight at once."""
    batch_requests_max: int = 512
    batch_bytes_max: int = 1 << 20
    batch_delay_ms: int = 5
    """How long the primary waits for a batch to fill before sending a partial one."""
    partial_batches_in_flight_max: int = 2
    """A partial (not full) batch is proposed only while fewer batches than this are in
    flight; otherwise requests accumulate until one executes (Nagle-style). Under load this
    grows batches instead of cutting one per batch_delay_ms, which is what makes per-block
    costs (signatures, fsync) shared by many records; full batches still use the whole
    pipeline_depth."""
    request_bytes_max: int = 1 << 20
    request_timeout_ms: int = 2000
    """A backup starts a view change when a known request stays unexecuted this long (after
    relaying it once), unless the primary is making progress: see request_patience."""
    request_patience: int = 4
    """While batches keep executing, a backup re-arms the request timer up to this many more
    times before suspecting the primary: a deep but draining queue under load is not a fault,
    while a primary that censors one request is still replaced after
    (request_patience + 2) * request_timeout_ms."""
    view_change_timeout_ms: int = 2000
    """Time a replica waits for NEW-VIEW before moving to the next view (doubles each attempt)."""
    view_change_timeout_max_ms: int = 60000
    status_interval_ms: int = 500
    """How often a replica gossips its progress so that peers can retransmit what it lacks."""
    retransmit_seqs_max: int = 64
    """Most sequence numbers a replica retransmits (headers and votes, never batches) in
    answer to one STATUS."""
    client_nonce_window: int = 16384
    """Nonces this far below a client's highest executed nonce are stale; inside the window each
    nonce executes at most once, so a client may pipeline requests (a streaming submitter keeps
    thousands in flight, in any order)."""
    pending_requests_max: int = 100_000
    """Most client requests a replica keeps waiting for ordering
    (beyond it, new ones are refused)."""
    pending_bytes_max: int = 128 << 20
    """Most request bytes (`Request.size_bytes`) a replica keeps waiting for ordering, from all
    clients: memory stays bounded by bytes, not only by count, under big records."""
    client_pending_bytes_max: int = 16 << 20
    """Most request bytes one client may have waiting at a replica (so one client cannot take
    the whole `pending_bytes_max`)."""
    clock_skew_ms_max: int = 30_000
    """A backup refuses to prepare a proposal whose timestamp is further than this from its own
    clock (the primary's time becomes the block's certified time; no one moves it far)."""
    batch_answer_bytes_max: int = 8 << 20
    """Most bytes of batches a replica sends one peer per STATUS tick in answer to its
    BATCH-REQUESTs (a small request must not buy a window of full batches every tick)."""
    slow_primary_lag_ms: int = 400
    """A backup suspects a primary that is slow but alive (Indy's RBFT monitors throughput for
    the same reason: request timeouts only catch a primary that stops): when the primary's
    STATUS messages arrive at least this late, and four times later than the other members'
    (so the backup's own load does not count), for `slow_primary_ticks` ticks in a row, the
    backup votes for a view change. 0 disables the monitor."""
    slow_primary_ticks: int = 6
    batch_fetch_seqs_max: int = 16
    """Most sequence numbers a replica asks peers for missing batches per STATUS tick."""
    future_messages_max: int = 4096
    """Most messages buffered for a later view or epoch, oldest dropped first."""
    message_bytes_max: int = 64 << 20
    """Largest encoded consensus message accepted: a PRE-PREPARE with its batch (at most
    `batch_bytes_max` of requests), a state response's client table; VIEW-CHANGE and NEW-VIEW
    carry proposal headers only (`viewchange.view_change_bytes_max`)."""

    def __post_init__(self) -> None:
        if self.request_patience < 0:
            raise ValueError("request_patience must be >= 0")
        if self.partial_batches_in_flight_max < 1:
            raise ValueError("partial_batches_in_flight_max must be >= 1")
        if self.checkpoint_interval < 1:
            raise ValueError("checkpoint_interval must be >= 1")
        if self.log_window < 2 * self.checkpoint_interval:
            raise ValueError("log_window must be at least 2 * checkpoint_interval")
        if not 1 <= self.pipeline_depth <= self.log_window:
            raise ValueError("pipeline_depth must be between 1 and log_window")
        for name in ("batch_requests_max", "batch_bytes_max", "request_bytes_max",
                     "request_timeout_ms", "view_change_timeout_ms", "status_interval_ms",
                     "retransmit_seqs_max", "client_nonce_window", "pending_requests_max",
                     "future_messages_max", "message_bytes_max", "pending_bytes_max",
                     "client_pending_bytes_max", "batch_fetch_seqs_max", "batch_answer_bytes_max"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.request_bytes_max > self.batch_bytes_max:
            raise ValueError("request_bytes_max must not exceed batch_bytes_max (a request "
                             "must fit in a batch)")
        if self.client_pending_bytes_max > self.pending_bytes_max:
            raise ValueError("client_pending_bytes_max must not exceed pending_bytes_max")
        if self.request_bytes_max > self.client_pending_bytes_max:
            raise ValueError("request_bytes_max must not exceed client_pending_bytes_max (a "
                             "request must fit in a client's share)")
        if self.slow_primary_lag_ms < 0 or self.slow_primary_ticks < 1:
            raise ValueError("slow_primary_lag_ms must be >= 0 and slow_primary_ticks >= 1")
        if self.clock_skew_ms_max < 0:
            raise ValueError("clock_skew_ms_max must be >= 0 (0: no check)")
        if self.batch_delay_ms < 0:
            raise ValueError("batch_delay_ms must be >= 0")
        if self.view_change_timeout_max_ms < self.view_change_timeout_ms:
            raise ValueError("view_change_timeout_max_ms must be >= view_change_timeout_ms")
