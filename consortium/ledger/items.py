"""Envelope items as the ledger keeps them: record ids, and views with segments withheld.

A client request's payload is an envelope of items (`consortium/pbft/payload.py`); each item is
one transaction (a record, a grant, a vote...), a segmented payload whose segment 0 is its public
header. The ledger gives every item of an executed request an entry and a record id:

    record_id = H("consortium/record-id", request_digest, item_index:u32)

unique because a request (client, nonce) executes at most once, and known to the client as soon
as it has signed the envelope.

An `ItemView` is an item with some segments replaced by their hashes: its digest is the item's
digest, so the envelope's Merkle root, the client's signature and the block's inclusion proof
all still verify. Validators show views to clients (key material only goes through the access
rules) and keep views in place of erased items.
"""

from __future__ import annotations

from dataclasses import dataclass

from consortium.crypto.hashing import DIGEST_BYTES, tagged_hash
from consortium.pbft.codec import DecodeError, Reader, Writer
from consortium.pbft.payload import (
    digest_of_segment_hashes,
    encode_segments,
    item_digest,
    segment_hash,
    split_segments,
)

VIEW_VERSION = 2


def record_id(request_digest: bytes, index: int) -> str:
    """The id of item `index` of the request with this digest (64 lowercase hex digits)."""
    return tagged_hash(b"consortium/record-id", request_digest,
                       index.to_bytes(4, "big")).hex()


def is_record_id(value: str) -> bool:
    if len(value) != 2 * DIGEST_BYTES or value != value.lower():
        return False
    try:
        bytes.fromhex(value)
    except ValueError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class Withheld:
    """A payload segment shown only by its hash."""

    hash: bytes


Segment = bytes | Withheld


@dataclass(frozen=True, slots=True)
class ItemView:
    """An envelope item with some segments withheld (segment 0, the public header, always
    shows). `raw` holds an unsegmented item, which is never withheld."""

    segments: tuple[Segment, ...]
    raw: bytes | None = None

    @classmethod
    def of(cls, item: bytes, keep: frozenset[int] | None = None) -> ItemView:
        """The view of an item showing segment 0 and the segments in `keep` (all when None)."""
        segs = split_segments(item)
        if segs is None:
            return cls((), item)
        return cls(tuple(s if i == 0 or keep is None or i in keep
                         else Withheld(segment_hash(s)) for i, s in enumerate(segs)))

    def withhold(self, keep: frozenset[int]) -> ItemView:
        """This view with every segment but 0 and `keep` withheld."""
        if self.raw is not None:
            return self
        return ItemView(tuple(s if i == 0 or i in keep or isinstance(s, Withheld)
                              else Withheld(segment_hash(s))
                              for i, s in enumerate(self.segments)))

    @property
    def digest(self) -> bytes:
        if self.raw is not None:
            return item_digest(self.raw)
        return digest_of_segment_hashes([s.hash if isinstance(s, Withheld) else segment_hash(s)
                                         for s in self.segments])

    @property
    def complete(self) -> bool:
        return not any(isinstance(s, Withheld) for s in self.segments)

    def present(self) -> list[bytes | None]:
        """Segments, withheld ones as None (a raw item is one segment)."""
        if self.raw is not None:
            return [self.raw]
        return [None if isinstance(s, Withheld) else s for s in self.segments]

    def to_item(self) -> bytes:
        """The item's bytes (only for a complete view)."""
        if self.raw is not None:
            return self.raw
        if not self.complete:
            raise ValueError("a view with withheld segments is not the full item")
        return encode_segments([s for s in self.segments if isinstance(s, bytes)])

    def encode(self) -> bytes:
        w = Writer()
        w.u8(VIEW_VERSION)
        if self.raw is not None:
            w.u8(0)
            w.blob(self.raw)
            return w.getvalue()
        w.u8(1)
        w.u32(len(self.segments))
        for s in self.segments:
            if isinstance(s, Withheld):
                w.u8(0)
                w.fixed(s.hash)
            else:
                w.u8(1)
                w.blob(s)
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes) -> ItemView:
        """Raises DecodeError on malformed bytes."""
        rd = Reader(data)
        if rd.u8() != VIEW_VERSION:
            raise DecodeError("unsupported item view version")
        form = rd.u8()
        if form == 0:
            raw = rd.blob()
            rd.end()
            return cls((), raw)
        if form != 1:
            raise DecodeError("bad item view form")
        segs: list[Segment] = []
        for _ in range(rd.count()):
            shown = rd.u8()
            if shown > 1:  # only 0 and 1 encode: one view, one encoding
                raise DecodeError("bad item view segment flag")
            segs.append(rd.blob() if shown else Withheld(rd.fixed(DIGEST_BYTES)))
        rd.end()
        if not segs or isinstance(segs[0], Withheld):
            raise DecodeError("an item view always shows segment 0")
        return cls(tuple(segs))


Item = bytes | ItemView
"""An entry's item as kept or shown: in full, or as a view with some segments withheld."""


def digest_of(item: Item) -> bytes:
    return item.digest if isinstance(item, ItemView) else item_digest(item)


def segments_of(item: Item) -> list[bytes | None] | None:
    """The item's segments (withheld ones None), or None for an unsegmented item."""
    if isinstance(item, ItemView):
        return None if item.raw is not None else item.present()
    segs = split_segments(item)
    return None if segs is None else list(segs)


def public_view(item: Item) -> Item:
    """What anyone may see of an item: its public header (segment 0) only."""
    view = item if isinstance(item, ItemView) else ItemView.of(item)
    return view if view.raw is not None else view.withhold(frozenset())
