"""A replica's keys across a rotation (the simulator's key-rotation scenario runs the switch
itself): a key added ahead of the epoch that names it signs nothing before that epoch, and a
lagging member that still signs with the key of its epoch is heard when it asks to catch up
(STATUS), not when it votes."""

from __future__ import annotations

from consortium.crypto.signing import Ed25519Signer
from consortium.pbft import codec
from consortium.pbft import events as ev
from consortium.pbft import messages as m
from tests.pbft.harness import CHAIN_ID, SIGNERS, VERIFIER, make_node


def _sent(actions: list[ev.Action]) -> list[m.SignedMessage]:
    return [codec.decode_signed(a.data, CHAIN_ID) for a in actions if isinstance(a, ev.Send)]


def test_a_key_for_a_later_epoch_signs_nothing_before_it() -> None:
    node = make_node(1)
    new = Ed25519Signer.generate()
    node.replica.add_signer(new)
    assert node.replica.signing_keys == {SIGNERS[1].public_key, new.public_key}
    actions = node.replica.step(ev.TimerFired(ev.TimerKind.STATUS, node.replica._token_counter))
    statuses = [msg for msg in _sent(actions) if isinstance(msg.body, m.Status)]
    assert statuses
    for msg in statuses:
        assert VERIFIER.verify(SIGNERS[1].public_key, codec.signing_bytes(
            CHAIN_ID, 1, msg.body_bytes), msg.signature)
        assert not VERIFIER.verify(new.public_key, codec.signing_bytes(
            CHAIN_ID, 1, msg.body_bytes), msg.signature)


def test_a_message_under_a_key_no_epoch_names_is_a_fault() -> None:
    node = make_node(0)
    stranger = Ed25519Signer.generate()
    status = codec.sign_message(stranger, CHAIN_ID, 2, m.Status(0, 0, True, 0, 0, 0))
    actions = node.replica.step(ev.PeerMessage(status.wire))
    assert any(isinstance(a, ev.PeerFault) and a.sender == 2 for a in actions)
