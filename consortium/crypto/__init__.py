"""Cryptographic building blocks: hashing, Ed25519 signing, Merkle trees.

Nothing here knows about gRPC, SQL or the consensus protocol.
"""
