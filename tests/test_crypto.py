"""Merkle trees, Ed25519 signing and the caching verifier, against adversarial inputs."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consortium.crypto.hashing import tagged_hash
from consortium.crypto.merkle import (
    EMPTY_ROOT,
    InclusionProof,
    MerkleTree,
    inclusion_proof,
    leaf_hash,
    merkle_root,
    node_hash,
    root_of_hashes,
    verify_inclusion,
)
from consortium.crypto.signing import (
    CachingVerifier,
    Ed25519Signer,
    Ed25519Verifier,
)

SIZES = range(1, 34)


def _leaves(n: int) -> list[bytes]:
    """Distinct leaves (a wrong index must not land on an equal leaf)."""
    return [b"leaf-%d" % i for i in range(n)]


def _h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _reference_root(leaves: list[bytes]) -> bytes:
    """RFC 6962 section 2.1, written independently of the module under test."""
    if not leaves:
        return _h(b"")
    if len(leaves) == 1:
        return _h(b"\x00" + leaves[0])
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return _h(b"\x01" + _reference_root(leaves[:k]) + _reference_root(leaves[k:]))


# ------------------------------------------------------------------------------- merkle roots

# The RFC 6962 test vectors (certificate-transparency merkle_tree_test.cc).
RFC6962_LEAVES = [
    b"", b"\x00", b"\x10", b"\x20\x21", b"\x30\x31", b"\x40\x41\x42\x43",
    bytes.fromhex("5051525354555657"), bytes.fromhex("606162636465666768696a6b6c6d6e6f"),
]
RFC6962_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]


@pytest.mark.parametrize("n", range(1, 9))
def test_rfc6962_known_roots(n: int) -> None:
    assert merkle_root(RFC6962_LEAVES[:n]).hex() == RFC6962_ROOTS[n - 1]


def test_small_trees_by_hand() -> None:
    a, b, c = b"a", b"b", b"c"
    ha, hb, hc = _h(b"\x00a"), _h(b"\x00b"), _h(b"\x00c")
    assert merkle_root([]) == EMPTY_ROOT == _h(b"")
    assert merkle_root([a]) == ha
    assert merkle_root([a, b]) == _h(b"\x01" + ha + hb)
    assert merkle_root([a, b, c]) == _h(b"\x01" + _h(b"\x01" + ha + hb) + hc)
    assert leaf_hash(a) == ha
    assert node_hash(ha, hb) == _h(b"\x01" + ha + hb)
    assert root_of_hashes([ha, hb, hc]) == merkle_root([a, b, c])


@pytest.mark.parametrize("n", SIZES)
def test_root_matches_reference(n: int) -> None:
    assert merkle_root(_leaves(n)) == _reference_root(_leaves(n))


def test_root_depends_on_order_and_count() -> None:
    leaves = _leaves(5)
    roots = {merkle_root(leaves), merkle_root(leaves[::-1]), merkle_root(leaves[:4]),
             merkle_root([*leaves, leaves[-1]])}
    assert len(roots) == 4


# ---------------------------------------------------------------------------- inclusion proofs

@pytest.mark.parametrize("n", SIZES)
def test_inclusion_proofs_verify_for_every_index(n: int) -> None:
    leaves = _leaves(n)
    root = merkle_root(leaves)
    for i in range(n):
        proof = inclusion_proof(leaves, i)
        assert proof.index == i and proof.size == n
        assert len(proof.path) <= max(0, (n - 1).bit_length())
        assert verify_inclusion(leaves[i], proof, root), (n, i)


def _reference_path(hashes: list[bytes], index: int) -> list[bytes]:
    """RFC 6962 PATH(m, D[n]), computed from scratch (no shared subtree roots)."""
    n = len(hashes)
    if n == 1:
        return []
    k = 1
    while k * 2 < n:
        k *= 2
    if index < k:
        return [*_reference_path(hashes[:k], index), root_of_hashes(hashes[k:])]
    return [*_reference_path(hashes[k:], index - k), root_of_hashes(hashes[:k])]


@pytest.mark.parametrize("n", [*SIZES, 500, 513])
def test_one_tree_serves_every_proof_of_a_block_exactly(n: int) -> None:
    """A MerkleTree caches subtree roots across proofs (a block's receipts): the proofs, asked
    in any order, are exactly RFC 6962's audit paths and its root is the block's root."""
    leaves = _leaves(n)
    tree = MerkleTree(leaves)
    hashes = [_h(b"\x00" + x) for x in leaves]
    for i in [*range(n - 1, -1, -3), *range(n)]:
        assert tree.proof(i) == InclusionProof(i, n, tuple(_reference_path(hashes, i)))
    assert tree.root() == merkle_root(leaves)
    with pytest.raises(IndexError):
        tree.proof(n)


@pytest.mark.parametrize("n", SIZES)
def test_inclusion_fails_for_wrong_leaf(n: int) -> None:
    leaves = _leaves(n)
    root = merkle_root(leaves)
    for i in range(n):
        proof = inclusion_proof(leaves, i)
        assert not verify_inclusion(leaves[i] + b"x", proof, root)
        assert not verify_inclusion(b"not a leaf", proof, root)
        if n > 1:
            assert not verify_inclusion(leaves[(i + 1) % n], proof, root)


@pytest.mark.parametrize("n", SIZES)
def test_inclusion_fails_for_wrong_index(n: int) -> None:
    leaves = _leaves(n)
    root = merkle_root(leaves)
    for i in range(n):
        proof = inclusion_proof(leaves, i)
        for j in [*range(-2, n + 2)]:
            if j == i:
                continue
            moved = InclusionProof(j, proof.size, proof.path)
            assert not verify_inclusion(leaves[i], moved, root), (n, i, j)


@pytest.mark.parametrize("n", SIZES)
def test_inclusion_fails_for_tampered_path(n: int) -> None:
    leaves = _leaves(n)
    root = merkle_root(leaves)
    for i in range(n):
        proof = inclusion_proof(leaves, i)
        for k in range(len(proof.path)):
            element = proof.path[k]
            for tampered in (bytes([element[0] ^ 1]) + element[1:], element[:-1],
                             element + b"\x00", bytes(32)):
                path = (*proof.path[:k], tampered, *proof.path[k + 1:])
                assert not verify_inclusion(leaves[i], InclusionProof(i, n, path), root)
        # A path with an element missing, an extra element, or reordered never verifies.
        if proof.path:
            assert not verify_inclusion(leaves[i], InclusionProof(i, n, proof.path[:-1]), root)
            assert not verify_inclusion(leaves[i], InclusionProof(i, n, proof.path[1:]), root)
        assert not verify_inclusion(
            leaves[i], InclusionProof(i, n, (*proof.path, bytes(32))), root)
        assert not verify_inclusion(
            leaves[i], InclusionProof(i, n, (bytes(32), *proof.path)), root)
        if len(set(proof.path)) > 1:
            reordered = InclusionProof(i, n, proof.path[::-1])
            assert not verify_inclusion(leaves[i], reordered, root)


@pytest.mark.parametrize("n", SIZES)
def test_inclusion_fails_against_another_root(n: int) -> None:
    leaves = _leaves(n)
    other = merkle_root([*leaves, b"extra"])
    for i in range(n):
        assert not verify_inclusion(leaves[i], inclusion_proof(leaves, i), other)


@pytest.mark.parametrize("n", SIZES)
def test_inclusion_fails_for_wrong_size_of_last_leaf_or_index_out_of_range(n: int) -> None:
    """The sizes the path does bind: the last leaf's proof pins the size, and no size that puts
    the index outside the tree (or a non-positive size) verifies."""
    leaves = _leaves(n)
    root = merkle_root(leaves)
    last = inclusion_proof(leaves, n - 1)
    for size in range(-1, 2 * n + 3):
        if size != n:
            assert not verify_inclusion(leaves[-1], InclusionProof(n - 1, size, last.path), root)
    for i in range(n):
        proof = inclusion_proof(leaves, i)
        for size in range(-1, i + 1):
            assert not verify_inclusion(leaves[i], InclusionProof(i, size, proof.path), root)


def _verify_bound(leaf: bytes, proof: InclusionProof, root: bytes, record_count: int) -> bool:
    """What a caller must do (see verify_inclusion's docstring): bind the size it knows (a block
    header carries its record count) before trusting the path."""
    return proof.size == record_count and verify_inclusion(leaf, proof, root)


def test_inclusion_does_not_bind_the_size_so_callers_must() -> None:
    """Like RFC 6962/9162 inclusion proofs, the root does not commit to the tree size: a proof
    for leaf i of an n-leaf tree also verifies with another size n' of the same path shape.
    Concretely n=3, i=0 verifies with size 4 (both paths are: leaf 1, then the right subtree).
    Checking `proof.size` against the expected record count rejects every such size."""
    leaves = _leaves(3)
    root = merkle_root(leaves)
    proof = inclusion_proof(leaves, 0)
    assert proof.size == 3
    wrong = InclusionProof(0, 4, proof.path)
    assert verify_inclusion(leaves[0], wrong, root)  # the size field alone is not bound
    assert not _verify_bound(leaves[0], wrong, root, record_count=3)
    assert _verify_bound(leaves[0], proof, root, record_count=3)

    unbound, bound = [], []
    for n in SIZES:
        leaves = _leaves(n)
        root = merkle_root(leaves)
        for i in range(n):
            proof = inclusion_proof(leaves, i)
            assert _verify_bound(leaves[i], proof, root, record_count=n)
            for size in range(1, 2 * n + 3):
                if size == n:
                    continue
                claimed = InclusionProof(i, size, proof.path)
                if verify_inclusion(leaves[i], claimed, root):
                    unbound.append((n, i, size))
                if _verify_bound(leaves[i], claimed, root, record_count=n):
                    bound.append((n, i, size))
    assert (3, 0, 4) in unbound
    assert bound == []


def test_inclusion_proof_rejects_out_of_range_index() -> None:
    for i in (-1, 3, 100):
        with pytest.raises(IndexError):
            inclusion_proof(_leaves(3), i)
    with pytest.raises(IndexError):
        inclusion_proof([], 0)


def test_huge_claimed_size_is_rejected_quickly() -> None:
    leaves = _leaves(4)
    root = merkle_root(leaves)
    proof = inclusion_proof(leaves, 1)
    for size in (1 << 40, 1 << 64, 1 << 200):
        assert not verify_inclusion(leaves[1], InclusionProof(1, size, proof.path), root)


# ------------------------------------------------------------------- leaf / node separation

@pytest.mark.parametrize("n", [2, 3, 4, 5, 8, 13, 16, 33])
def test_inner_node_presented_as_leaf_does_not_verify(n: int) -> None:
    """Second-preimage attack: take the two children of an inner node, present their
    concatenation as one leaf with the shortened path. Must fail (0x00 vs 0x01 prefixes)."""
    leaves = _leaves(n)
    root = merkle_root(leaves)
    hashes = [leaf_hash(x) for x in leaves]
    for i in range(0, n - 1, 2):
        proof = inclusion_proof(leaves, i)
        # Leaves i and i+1 are siblings under one inner node at the bottom level when i is even
        # and i+1 is in the same 2-leaf subtree: the first path element is then leaf i+1's hash.
        if proof.path[0] != hashes[i + 1]:
            continue
        inner_as_leaf = hashes[i] + hashes[i + 1]
        # Without domain separation, leaf_hash(inner_as_leaf) would equal the inner node.
        assert leaf_hash(inner_as_leaf) != node_hash(hashes[i], hashes[i + 1])
        for index in (i // 2, i):
            for size in (n - 1, n, (n + 1) // 2):
                if size < 1:
                    continue
                forged = InclusionProof(index, size, proof.path[1:])
                assert not verify_inclusion(inner_as_leaf, forged, root)


def test_leaf_hash_is_not_a_node_hash() -> None:
    left, right = _h(b"l"), _h(b"r")
    assert leaf_hash(left + right) != node_hash(left, right)
    assert leaf_hash(b"") != EMPTY_ROOT
    # A single-leaf tree whose leaf is the encoding of an inner node is a different tree.
    assert merkle_root([left + right]) != merkle_root([b"l", b"r"])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.binary(max_size=40), min_size=1, max_size=40, unique=True), st.data())
def test_inclusion_property(leaves: list[bytes], data: st.DataObject) -> None:
    root = merkle_root(leaves)
    assert root == _reference_root(leaves)
    i = data.draw(st.integers(0, len(leaves) - 1))
    proof = inclusion_proof(leaves, i)
    assert verify_inclusion(leaves[i], proof, root)
    other = data.draw(st.sampled_from(leaves))
    assert verify_inclusion(other, proof, root) == (other == leaves[i])


# -------------------------------------------------------------------------------- hashing

def test_tagged_hash_is_unambiguous() -> None:
    assert tagged_hash(b"t", b"ab", b"c") != tagged_hash(b"t", b"a", b"bc")
    assert tagged_hash(b"t", b"abc") != tagged_hash(b"t", b"ab", b"c")
    assert tagged_hash(b"t", b"") != tagged_hash(b"t")
    assert tagged_hash(b"ta", b"g") != tagged_hash(b"t", b"ag")


# -------------------------------------------------------------------------------- signing

SEED_A = bytes(range(32))
SEED_B = bytes(range(1, 33))


def test_ed25519_rfc8032_vector() -> None:
    """RFC 8032 section 7.1, test 1 (empty message)."""
    seed = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
    signer = Ed25519Signer(seed)
    assert signer.public_key.hex() == (
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
    sig = signer.sign(b"")
    assert sig.hex() == (
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e"
        "39701cf9b46bd25bf5f0595bbe24655141438e7a100b")
    assert Ed25519Verifier().verify(signer.public_key, b"", sig)
    assert signer.seed == seed


def test_sign_verify_round_trip_and_rejections() -> None:
    a, b = Ed25519Signer(SEED_A), Ed25519Signer(SEED_B)
    v = Ed25519Verifier()
    msg = b"consortium message"
    sig = a.sign(msg)
    assert len(sig) == 64 and len(a.public_key) == 32
    assert sig == a.sign(msg)  # deterministic
    assert v.verify(a.public_key, msg, sig)
    assert not v.verify(b.public_key, msg, sig)  # wrong key
    assert not v.verify(a.public_key, msg + b"!", sig)  # mutated message
    assert not v.verify(a.public_key, msg[:-1], sig)
    assert not v.verify(a.public_key, msg, sig[:-1])  # short signature
    assert not v.verify(a.public_key, msg, sig + b"\x00")  # long signature
    assert not v.verify(a.public_key, msg, b"")
    assert not v.verify(a.public_key[:-1], msg, sig)  # short key
    assert not v.verify(b"", msg, sig)
    assert not v.verify(bytes(32), msg, sig)  # degenerate key
    assert not v.verify(b"\xff" * 32, msg, sig)  # not a curve point
    assert not v.verify(a.public_key, msg, bytes(64))


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 63), st.integers(1, 255))
def test_any_signature_bit_flip_is_rejected(msg: bytes, pos: int, xor: int) -> None:
    a = Ed25519Signer(SEED_A)
    v = Ed25519Verifier()
    sig = a.sign(msg)
    bad = sig[:pos] + bytes([sig[pos] ^ xor]) + sig[pos + 1:]
    assert v.verify(a.public_key, msg, sig)
    assert not v.verify(a.public_key, msg, bad)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=40), st.binary(max_size=40), st.binary(max_size=80))
def test_verifier_never_raises(key: bytes, msg: bytes, sig: bytes) -> None:
    assert Ed25519Verifier().verify(key, msg, sig) is False


def test_signer_rejects_bad_seed() -> None:
    for seed in (b"", bytes(31), bytes(33)):
        with pytest.raises(ValueError):
            Ed25519Signer(seed)


# ------------------------------------------------------------------------- caching verifier

def test_caching_verifier_never_caches_failures() -> None:
    a = Ed25519Signer(SEED_A)
    cv = CachingVerifier(Ed25519Verifier(), entries_max=8)
    msg = b"m"
    good = a.sign(msg)
    bad = bytes([good[0] ^ 1]) + good[1:]
    assert cv.verify(a.public_key, msg, bad) is False
    assert cv.verify(a.public_key, msg, bad) is False
    assert (cv.hits, cv.misses) == (0, 2)
    assert cv.verify(a.public_key, msg, good) is True
    assert (cv.hits, cv.misses) == (0, 3)
    assert cv.verify(a.public_key, msg, good) is True
    assert (cv.hits, cv.misses) == (1, 3)
    # The cached success does not leak onto a different triple.
    assert cv.verify(a.public_key, msg, bad) is False
    assert cv.verify(a.public_key, msg + b"x", good) is False
    assert cv.verify(Ed25519Signer(SEED_B).public_key, msg, good) is False
    assert cv.verify(a.public_key, msg, good[:-1]) is False
    assert cv.hits == 1


def test_caching_verifier_respects_entries_max() -> None:
    a = Ed25519Signer(SEED_A)
    cv = CachingVerifier(Ed25519Verifier(), entries_max=3)
    msgs = [b"m%d" % i for i in range(5)]
    sigs = [a.sign(x) for x in msgs]
    for x, s in zip(msgs, sigs, strict=True):
        assert cv.verify(a.public_key, x, s)
    assert (cv.hits, cv.misses) == (0, 5)
    # The last three are remembered (no inner verification)...
    for x, s in zip(msgs[2:], sigs[2:], strict=True):
        assert cv.verify(a.public_key, x, s)
    assert (cv.hits, cv.misses) == (3, 5)
    # ...the two oldest were evicted, so they are verified again (and still succeed).
    assert cv.verify(a.public_key, msgs[0], sigs[0])
    assert cv.verify(a.public_key, msgs[1], sigs[1])
    assert (cv.hits, cv.misses) == (3, 7)


def test_caching_verifier_with_one_entry() -> None:
    a = Ed25519Signer(SEED_A)
    cv = CachingVerifier(Ed25519Verifier(), entries_max=1)
    s1, s2 = a.sign(b"1"), a.sign(b"2")
    assert cv.verify(a.public_key, b"1", s1) and cv.verify(a.public_key, b"2", s2)
    assert cv.verify(a.public_key, b"1", s1)
    assert (cv.hits, cv.misses) == (0, 3)
    assert cv.verify(a.public_key, b"1", s1)
    assert (cv.hits, cv.misses) == (1, 3)


def test_caching_verifier_rejects_non_positive_size() -> None:
    for n in (0, -1):
        with pytest.raises(ValueError):
            CachingVerifier(Ed25519Verifier(), entries_max=n)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.booleans()), max_size=30), st.integers(1, 4))
def test_caching_verifier_agrees_with_inner(ops: list[tuple[int, bool]], size: int) -> None:
    a = Ed25519Signer(SEED_A)
    inner = Ed25519Verifier()
    cv = CachingVerifier(inner, entries_max=size)
    for i, good in ops:
        msg = b"msg-%d" % i
        sig = a.sign(msg)
        if not good:
            sig = sig[:10] + bytes([sig[10] ^ 0x40]) + sig[11:]
        assert cv.verify(a.public_key, msg, sig) == good == inner.verify(a.public_key, msg, sig)
