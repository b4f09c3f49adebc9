"""The standalone verifier's hand-written checks agree with the portal's own Merkle and note code."""

from __future__ import annotations

import hashlib
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from portal.audit import merkle
from portal.audit.checkpoint import Checkpoint, sign_checkpoint, verifier_key_string
from portal.dsar.signed import sign_bytes, sign_document
from portal.evidence import verify_pack as v
from portal.security.crypto import public_key_fingerprint

LEAVES = [merkle.leaf_hash(f"entry {i}".encode()) for i in range(70)]


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 31, 32, 33, 64, 70])
def test_inclusion_proofs_verify_and_wrong_ones_do_not(size: int) -> None:
    tree = merkle.MerkleTree(LEAVES[:size])
    root = tree.root()
    for index in range(size):
        path = tree.inclusion_proof(index, size)
        assert v.verify_inclusion(LEAVES[index], index, size, path, root)
        assert not v.verify_inclusion(LEAVES[(index + 1) % 70], index, size, path, root)
        if path:
            assert not v.verify_inclusion(LEAVES[index], index, size, path[:-1], root)
    assert not v.verify_inclusion(LEAVES[0], size, size, [], root)


@pytest.mark.parametrize(
    ("old", "new"), [(1, 2), (2, 3), (3, 7), (4, 8), (4, 9), (7, 8), (8, 70), (16, 33), (33, 64), (5, 5)]
)
def test_consistency_proofs_verify_and_rewritten_histories_do_not(old: int, new: int) -> None:
    proof = merkle.consistency_proof(LEAVES, old, new)
    old_root, new_root = merkle.root_from_leaf_hashes(LEAVES[:old]), merkle.root_from_leaf_hashes(LEAVES[:new])
    assert v.verify_consistency(old, new, old_root, new_root, proof)
    rewritten = [hashlib.sha256(b"forged").digest(), *LEAVES[1:old]]
    assert not v.verify_consistency(old, new, merkle.root_from_leaf_hashes(rewritten), new_root, proof)
    if old != new:
        assert not v.verify_consistency(
            old, new, old_root, merkle.root_from_leaf_hashes(LEAVES[: new - 1] + rewritten[:1]), proof
        )


def test_leaf_hash_matches_the_ledger() -> None:
    assert v.leaf_hash(b"abc") == merkle.leaf_hash(b"abc")


def test_signed_checkpoints_verify_and_other_keys_do_not() -> None:
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    note = sign_checkpoint(Checkpoint("portal.test/audit-ledger", 5, LEAVES[0]), "portal.test/audit-ledger", key)
    vkey = verifier_key_string("portal.test/audit-ledger", key.public_key())
    assert v.verify_checkpoint(note, vkey) == v.Checkpoint("portal.test/audit-ledger", 5, LEAVES[0])
    with pytest.raises(v.PackError, match="no signature"):
        v.verify_checkpoint(note, verifier_key_string("portal.test/audit-ledger", other.public_key()))
    with pytest.raises(v.PackError, match="does not verify"):
        v.verify_checkpoint(note.replace(b"\n5\n", b"\n6\n"), vkey)


def test_jws_checks_match_the_portals_signatures() -> None:
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    assert v.verify_jws(sign_bytes(b"manifest", key), key.public_key()) == b"manifest"
    with pytest.raises(v.PackError, match="does not verify"):
        v.verify_jws(sign_bytes(b"manifest", other), key.public_key())
    signed = sign_document({"type": "deletion-certificate", "n": 1}, key)
    assert json.loads(v.verify_jws(signed["jws"], key.public_key())) == signed["document"]


def test_fingerprint_matches_the_portals() -> None:
    key = Ed25519PrivateKey.generate().public_key()
    assert v.fingerprint(key) == public_key_fingerprint(key)


def test_garbage_is_reported_not_raised() -> None:
    results = v.verify_pack(b"not a zip")
    assert [(r.name, r.ok) for r in results] == [("pack", False)]
