"""A validator's key files across a rotation (consortium/node/keys.py): the next key is loaded
next to the current one, the epoch that names it promotes it (signing.key becomes the new key,
the old seed is kept), and a restart in between finds both."""

from __future__ import annotations

from pathlib import Path

from consortium.crypto.signing import Ed25519Signer
from consortium.localnet import read_seed
from consortium.node.keys import ValidatorKeys


def _write(path: Path, seed: bytes) -> Ed25519Signer:
    path.write_text(seed.hex())
    return Ed25519Signer(seed)


def test_the_next_key_is_loaded_then_promoted_by_its_epoch(tmp_path: Path) -> None:
    key_file = tmp_path / "signing.key"
    old = _write(key_file, bytes(range(32)))
    keys = ValidatorKeys(key_file)
    assert keys.load_next() is None and set(keys.signers) == {old.public_key}
    new = _write(tmp_path / "signing.key.next", bytes(range(1, 33)))
    loaded = keys.load_next()
    assert loaded is not None and loaded.public_key == new.public_key
    assert keys.load_next() is None  # once
    assert keys.current.public_key == old.public_key  # not before its epoch
    restarted = ValidatorKeys(key_file)  # a restart before the switch holds both
    assert set(restarted.signers) == {old.public_key, new.public_key}
    keys.promote(new.public_key, 3)
    assert keys.current.public_key == new.public_key
    assert read_seed(key_file) == bytes(range(1, 33))
    assert read_seed(tmp_path / "signing.key.replaced-3") == bytes(range(32))
    assert not (tmp_path / "signing.key.next").exists()
    keys.promote(new.public_key, 4)  # again: nothing to rename
    assert sorted(p.name for p in tmp_path.iterdir()) == ["signing.key",
                                                         "signing.key.replaced-3"]


def test_an_unreadable_next_key_is_ignored(tmp_path: Path) -> None:
    key_file = tmp_path / "signing.key"
    _write(key_file, bytes(32))
    (tmp_path / "signing.key.next").write_text("not hex")
    keys = ValidatorKeys(key_file)
    assert len(keys.signers) == 1
