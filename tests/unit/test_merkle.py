"""Tests for portal.audit.merkle against published RFC 6962/9162 vectors and an independent reference."""

from __future__ import annotations

import ast
import hashlib
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from portal.audit import merkle
from portal.audit.merkle import (
    EMPTY_ROOT,
    CompactRange,
    MerkleTree,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    leaf_hashes,
    node_hash,
    root_from_leaf_hashes,
    subtree_hash,
    verify_consistency,
    verify_inclusion,
)

# ---------------------------------------------------------------------------
# Published vectors: transparency-dev/merkle testonly/constants.go,
# proof/verify_test.go and rfc6962/rfc6962_test.go (the same 8-leaf tree as the
# google/certificate-transparency reference tests).


def h(s: str) -> bytes:
    return bytes.fromhex(s)


LEAF_INPUTS = [
    h(""),
    h("00"),
    h("10"),
    h("2021"),
    h("3031"),
    h("40414243"),
    h("5051525354555657"),
    h("606162636465666768696a6b6c6d6e6f"),
]

# ROOTS[n] is the root of the tree of the first n leaves.
ROOTS = [
    h("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
    h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
    h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"),
    h("aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77"),
    h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
    h("4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4"),
    h("76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef"),
    h("ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c"),
    h("5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"),
]

# NODE_HASHES[level][i]: complete subtree of 2**level leaves starting at i * 2**level.
NODE_HASHES = [
    [
        h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
        h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
        h("0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7"),
        h("07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7"),
        h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
        h("4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658"),
        h("b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f"),
        h("46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1"),
    ],
    [
        h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"),
        h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
        h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
        h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
    ],
    [
        h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
        h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
    ],
    [h("5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328")],
]

# Compact-range frontiers for sizes 0..8, as (level, index) into NODE_HASHES.
COMPACT_TREES = [
    [],
    [(0, 0)],
    [(1, 0)],
    [(1, 0), (0, 2)],
    [(2, 0)],
    [(2, 0), (0, 4)],
    [(2, 0), (1, 2)],
    [(2, 0), (1, 2), (0, 6)],
    [(3, 0)],
]

# (0-based leaf index, tree size, proof). The Go vectors number leaves from 1.
INCLUSION_VECTORS = [
    (0, 1, []),
    (
        0,
        8,
        [
            h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
        ],
    ),
    (
        5,
        8,
        [
            h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
            h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
            h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
        ],
    ),
    (2, 3, [h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125")]),
    (
        1,
        5,
        [
            h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
        ],
    ),
]

# (old size, new size, proof)
CONSISTENCY_VECTORS = [
    (1, 1, []),
    (
        1,
        8,
        [
            h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
        ],
    ),
    (
        6,
        8,
        [
            h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
            h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
            h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
        ],
    ),
    (
        2,
        5,
        [
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
        ],
    ),
    (
        6,
        7,
        [
            h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
            h("b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f"),
            h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
        ],
    ),
]

# Argument tuples for the verifiers, deliberately including ill-typed values.
Probe = tuple[Any, ...]

SOME_HASH = h("abacaba000000000000000000000000000000000000000000060061e00123456")
LEAF_HASHES = leaf_hashes(LEAF_INPUTS)


# ---------------------------------------------------------------------------
# Independent reference: the recursive definitions of RFC 9162 §2.1, written
# with hashlib directly so they share no code with the module under test.


def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(d: list[bytes]) -> bytes:
    if not d:
        return hashlib.sha256(b"").digest()
    if len(d) == 1:
        return d[0]
    k = _k(len(d))
    return hashlib.sha256(b"\x01" + ref_mth(d[:k]) + ref_mth(d[k:])).digest()


def ref_path(m: int, d: list[bytes]) -> list[bytes]:
    if len(d) == 1:
        return []
    k = _k(len(d))
    if m < k:
        return [*ref_path(m, d[:k]), ref_mth(d[k:])]
    return [*ref_path(m - k, d[k:]), ref_mth(d[:k])]


def ref_sides(m: int, n: int) -> list[bool]:
    """For PATH(m, D[n]): True where the proof element is a left sibling."""
    if n == 1:
        return []
    k = _k(n)
    if m < k:
        return [*ref_sides(m, k), False]
    return [*ref_sides(m - k, n - k), True]


def ref_subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if b else [ref_mth(d)]
    k = _k(n)
    if m <= k:
        return [*ref_subproof(m, d[:k], b), ref_mth(d[k:])]
    return [*ref_subproof(m - k, d[k:], False), ref_mth(d[:k])]


def ref_consistency_shape(m: int, n: int, b: bool = True) -> tuple[bool, list[str]]:
    """Structure of SUBPROOF(m, D[n], b): whether the old root is implied as the first
    node, then per element "L" (left sibling, folds into both roots) or "R" (right sibling)."""
    if m == n:
        return (b, [])
    k = _k(n)
    if m <= k:
        implied, roles = ref_consistency_shape(m, k, b)
        return (implied, [*roles, "R"])
    implied, roles = ref_consistency_shape(m - k, n - k, False)
    return (implied, [*roles, "L"])


def ref_consistency(m: int, d: list[bytes]) -> list[bytes]:
    return [] if m in (0, len(d)) else ref_subproof(m, d, True)


def gen_leaves(n: int, salt: bytes = b"") -> list[bytes]:
    return [leaf_hash(salt + str(i).encode()) for i in range(n)]


def flip(b: bytes, pos: int = 0, mask: int = 0x08) -> bytes:
    out = bytearray(b)
    out[pos] ^= mask
    return bytes(out)


# ---------------------------------------------------------------------------
# Hashing and roots


def test_hash_vectors() -> None:
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert leaf_hash(b"").hex() == "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    assert leaf_hash(b"L123456").hex() == "395aa064aa4c29f7010acfe3f25db9485bbd4b91897b6ad7ad547639252b4d56"
    assert node_hash(b"N123", b"N456").hex() == "aa217fe888e47007fa15edab33c2b492a722cb106c64667fc2b044444de66bbb"
    # Domain separation: a node is not the leaf hash of its children's concatenation.
    a, b = leaf_hash(b"Hello"), leaf_hash(b"World")
    assert node_hash(a, b) != leaf_hash(a + b)
    assert node_hash(a, b) != node_hash(b, a)
    # Level 0 of the published node hashes is the leaf hashes of the inputs.
    assert leaf_hashes(LEAF_INPUTS) == NODE_HASHES[0]
    assert [leaf_hash(e) for e in LEAF_INPUTS] == NODE_HASHES[0]


@pytest.mark.parametrize("size", range(9))
def test_roots_match_vectors(size: int) -> None:
    leaves = LEAF_HASHES[:size]
    assert root_from_leaf_hashes(leaves) == ROOTS[size]
    assert root_from_leaf_hashes(iter(leaves)) == ROOTS[size]
    assert MerkleTree(leaves).root() == ROOTS[size]
    assert MerkleTree(LEAF_HASHES).root(size) == ROOTS[size]
    assert subtree_hash(LEAF_HASHES, 0, size) == ROOTS[size]


def test_complete_subtree_vectors() -> None:
    for level, row in enumerate(NODE_HASHES):
        width = 1 << level
        for i, expected in enumerate(row):
            assert subtree_hash(LEAF_HASHES, i * width, (i + 1) * width) == expected


def test_compact_range_vectors() -> None:
    cr = CompactRange()
    tree = MerkleTree()
    for size in range(9):
        expected = tuple(NODE_HASHES[lvl][i] for lvl, i in COMPACT_TREES[size])
        assert cr.size == size
        assert cr.frontier == expected
        assert cr.root() == ROOTS[size]
        assert tree.compact_range() == cr
        if size < 8:
            cr.append(LEAF_HASHES[size])
            tree.append(LEAF_HASHES[size])


def test_root_rejects_bad_leaf_hash() -> None:
    with pytest.raises(ValueError, match="leaf hash #1 is 3 bytes"):
        root_from_leaf_hashes([LEAF_HASHES[0], b"abc"])
    with pytest.raises(ValueError, match="leaf hash #2"):
        MerkleTree([*LEAF_HASHES[:2], b""])


def test_roots_against_reference() -> None:
    leaves = gen_leaves(300)
    tree = MerkleTree(leaves)
    cr = CompactRange()
    for size in range(301):
        expected = ref_mth(leaves[:size])
        assert root_from_leaf_hashes(leaves[:size]) == expected
        assert tree.root(size) == expected
        assert cr.root() == expected
        if size < 300:
            cr.append(leaves[size])


def test_chunked_fold_matches_reference() -> None:
    # Long inputs are folded in aligned chunks of 4096 leaves; cross every boundary.
    leaves = gen_leaves(3 * 4096 + 123, b"chunk")
    expected = ref_mth(leaves)
    assert root_from_leaf_hashes(leaves) == expected
    assert root_from_leaf_hashes(iter(leaves)) == expected
    assert MerkleTree(leaves).root() == expected
    for n in (4095, 4096, 4097, 8192, 12288):
        assert root_from_leaf_hashes(leaves[:n]) == ref_mth(leaves[:n])
    for split in (0, 1, 4095, 4096, 4097, 5000, 8191):
        cr = CompactRange()
        cr.extend(leaves[:split])
        cr.extend(iter(leaves[split:]))
        assert cr.root() == expected
        assert cr.frontier == MerkleTree(leaves).compact_range().frontier
    bad = list(leaves)
    bad[5000] = b"short"
    with pytest.raises(ValueError, match="leaf hash #5000 is 5 bytes"):
        root_from_leaf_hashes(bad)
    cr = CompactRange()
    cr.extend(leaves[:10])
    with pytest.raises(ValueError, match="leaf hash #5000"):
        cr.extend(bad[10:])
    assert cr.size == 10
    assert cr.root() == ref_mth(leaves[:10])


# ---------------------------------------------------------------------------
# Inclusion proofs


def corrupt_inclusion(index: int, size: int, proof: list[bytes], root: bytes, leaf: bytes) -> list[Probe]:
    """The probes of transparency-dev/merkle's verifierCheck, as argument tuples."""
    probes: list[Probe] = [
        (leaf, index - 1, size, proof, root),
        (leaf, index + 1, size, proof, root),
        (leaf, index ^ 2, size, proof, root),
        (leaf, index, size * 2, proof, root),
        (leaf, index, size // 2, proof, root),
        (b"WrongLeaf", index, size, proof, root),
        (leaf, index, size, proof, EMPTY_ROOT),
        (leaf, index, size, proof, SOME_HASH),
        (leaf, index, size, [*proof, b""], root),
        (leaf, index, size, [*proof, root], root),
        (leaf, index, size, [b"", *proof], root),
        (leaf, index, size, [root, *proof], root),
    ]
    for i in range(len(proof)):
        bad = list(proof)
        bad[i] = flip(bad[i])
        probes.append((leaf, index, size, bad, root))
    if proof:
        probes.append((leaf, index, size, proof[:-1], root))
    if len(proof) > 1:
        probes.append((leaf, index, size, [proof[0], SOME_HASH, *proof[1:]], root))
    return probes


@pytest.mark.parametrize(("index", "size", "expected"), INCLUSION_VECTORS)
def test_inclusion_vectors(index: int, size: int, expected: list[bytes]) -> None:
    leaf = LEAF_HASHES[index]
    assert inclusion_proof(LEAF_HASHES[:size], index) == expected
    assert inclusion_proof(LEAF_HASHES, index, size) == expected
    assert MerkleTree(LEAF_HASHES).inclusion_proof(index, size) == expected
    assert verify_inclusion(leaf, index, size, expected, ROOTS[size])
    assert verify_inclusion(leaf, index, size, tuple(expected), ROOTS[size])
    for probe in corrupt_inclusion(index, size, expected, ROOTS[size], leaf):
        assert not verify_inclusion(*probe), probe


def test_inclusion_single_entry() -> None:
    leaf = leaf_hash(b"data")
    assert verify_inclusion(leaf, 0, 1, [], leaf)
    assert not verify_inclusion(leaf, 0, 1, [], b"")
    assert not verify_inclusion(b"", 0, 1, [], leaf)
    assert not verify_inclusion(b"", 0, 1, [], b"")


@pytest.mark.parametrize(("index", "size"), [(0, 0), (0, 1), (1, 0), (2, 1)])
def test_inclusion_rejects_invalid_root_or_leaf(index: int, size: int) -> None:
    assert not verify_inclusion(SOME_HASH, index, size, [], b"")
    assert not verify_inclusion(b"", index, size, [], EMPTY_ROOT)
    assert not verify_inclusion(SOME_HASH, index, size, [], EMPTY_ROOT)


@pytest.mark.parametrize(
    "args",
    [
        (None, 0, 8, [], ROOTS[8]),
        ("00" * 32, 0, 8, [], ROOTS[8]),
        (LEAF_HASHES[0], -1, 8, [], ROOTS[8]),
        (LEAF_HASHES[0], True, 8, [], ROOTS[8]),
        (LEAF_HASHES[0], 0, 8.0, [], ROOTS[8]),
        (LEAF_HASHES[0], 0, 2**64, [], ROOTS[8]),
        (LEAF_HASHES[0], 0, 8, None, ROOTS[8]),
        (LEAF_HASHES[0], 0, 8, b"".join(INCLUSION_VECTORS[1][2]), ROOTS[8]),
        (LEAF_HASHES[0], 0, 8, [None, None, None], ROOTS[8]),
        (LEAF_HASHES[0], 0, 8, iter(INCLUSION_VECTORS[1][2]), ROOTS[8]),
        (LEAF_HASHES[0], 0, 8, INCLUSION_VECTORS[1][2], bytearray(ROOTS[8])),
    ],
)
def test_verify_inclusion_never_raises(args: Probe) -> None:
    assert verify_inclusion(*args) is False


def test_inclusion_proof_errors() -> None:
    with pytest.raises(ValueError, match="outside a tree of size 0"):
        inclusion_proof([], 0)
    with pytest.raises(ValueError, match="leaf index 8"):
        inclusion_proof(LEAF_HASHES, 8)
    with pytest.raises(ValueError, match="leaf index -1"):
        MerkleTree(LEAF_HASHES).inclusion_proof(-1)
    with pytest.raises(ValueError, match="tree size 9"):
        inclusion_proof(LEAF_HASHES, 0, 9)
    with pytest.raises(ValueError, match="tree size 9"):
        MerkleTree(LEAF_HASHES).root(9)


def test_inclusion_against_reference_all_small_trees() -> None:
    leaves = gen_leaves(40)
    tree = MerkleTree(leaves)
    for size in range(1, 41):
        root = ref_mth(leaves[:size])
        for index in range(size):
            expected = ref_path(index, leaves[:size])
            assert inclusion_proof(leaves, index, size) == expected
            assert tree.inclusion_proof(index, size) == expected
            assert verify_inclusion(leaves[index], index, size, expected, root)


# ---------------------------------------------------------------------------
# Consistency proofs


def corrupt_consistency(old: int, new: int, old_root: bytes, new_root: bytes, proof: list[bytes]) -> list[Probe]:
    """The probes of transparency-dev/merkle's verifierConsistencyCheck."""
    probes: list[Probe] = [
        (old - 1, new, old_root, new_root, proof),
        (old + 1, new, old_root, new_root, proof),
        (old ^ 2, new, old_root, new_root, proof),
        (old, new * 2, old_root, new_root, proof),
        (old, new // 2, old_root, new_root, proof),
        (old, new, b"WrongRoot", new_root, proof),
        (old, new, old_root, b"WrongRoot", proof),
        (old, new, new_root, old_root, proof),
        (old, new, old_root, new_root, []),
        (old, new, old_root, new_root, [*proof, b""]),
        (old, new, old_root, new_root, [*proof, old_root]),
        (old, new, old_root, new_root, [*proof, new_root]),
        (old, new, old_root, new_root, [b"", *proof]),
        (old, new, old_root, new_root, [old_root, *proof]),
        (old, new, old_root, new_root, [new_root, *proof]),
        (old, new, old_root, new_root, [proof[0], *proof]),
        (old, new, old_root, new_root, proof[:-1]),
    ]
    for i in range(len(proof)):
        bad = list(proof)
        bad[i] = flip(bad[i], mask=0x10)
        probes.append((old, new, old_root, new_root, bad))
    return probes


@pytest.mark.parametrize(("old", "new", "expected"), CONSISTENCY_VECTORS)
def test_consistency_vectors(old: int, new: int, expected: list[bytes]) -> None:
    assert consistency_proof(LEAF_HASHES[:new], old) == expected
    assert consistency_proof(LEAF_HASHES, old, new) == expected
    assert MerkleTree(LEAF_HASHES).consistency_proof(old, new) == expected
    assert verify_consistency(old, new, ROOTS[old], ROOTS[new], expected)
    if expected:
        for probe in corrupt_consistency(old, new, ROOTS[old], ROOTS[new], expected):
            assert not verify_consistency(*probe), probe


ROOT1 = b"don't care 1"
ROOT2 = b"don't care 2"


@pytest.mark.parametrize(
    ("old", "new", "old_root", "new_root", "proof", "ok"),
    [
        (0, 0, ROOT1, ROOT2, [], False),
        (1, 1, ROOT1, ROOT2, [], False),
        # Always consistent. Unlike the Go reference we insist roots are 32-byte
        # hashes and that a size-0 tree has the empty-tree root.
        (0, 0, EMPTY_ROOT, EMPTY_ROOT, [], True),
        (0, 1, EMPTY_ROOT, ROOTS[1], [], True),
        (0, 8, EMPTY_ROOT, ROOTS[8], [], True),
        (1, 1, ROOTS[1], ROOTS[1], [], True),
        (0, 1, SOME_HASH, ROOTS[1], [], False),
        (0, 1, ROOT1, ROOT2, [], False),
        # Time travel to the past.
        (1, 0, ROOTS[1], ROOTS[0], [], False),
        (2, 1, ROOTS[2], ROOTS[1], [], False),
        # Empty proof.
        (1, 2, ROOTS[1], ROOTS[2], [], False),
        # Roots don't match.
        (0, 0, EMPTY_ROOT, SOME_HASH, [], False),
        (1, 1, EMPTY_ROOT, SOME_HASH, [], False),
        # Roots match but the proof is not empty.
        (0, 0, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT], False),
        (0, 1, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT], False),
        (1, 1, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT], False),
        # Malformed input never raises.
        (-1, 1, EMPTY_ROOT, EMPTY_ROOT, [], False),
        (False, 0, EMPTY_ROOT, EMPTY_ROOT, [], False),
        (1, 2**64, ROOTS[1], ROOTS[2], [], False),
        (1, 2, ROOTS[1], ROOTS[2], None, False),
        (1, 2, ROOTS[1], ROOTS[2], [None], False),
        (1, 2, ROOTS[1], ROOTS[2], NODE_HASHES[0][1], False),
        (1, 2, None, ROOTS[2], [NODE_HASHES[0][1]], False),
        (1, 2, ROOTS[1], ROOTS[2], [NODE_HASHES[0][1]], True),
    ],
)
def test_verify_consistency_edge_cases(
    old: int, new: int, old_root: bytes, new_root: bytes, proof: list[bytes], ok: bool
) -> None:
    assert verify_consistency(old, new, old_root, new_root, proof) is ok


def test_consistency_proof_errors() -> None:
    with pytest.raises(ValueError, match="old_size <= new_size"):
        consistency_proof(LEAF_HASHES, 9)
    with pytest.raises(ValueError, match="old_size <= new_size"):
        consistency_proof(LEAF_HASHES, 5, 4)
    with pytest.raises(ValueError, match="old_size <= new_size"):
        MerkleTree(LEAF_HASHES).consistency_proof(-1)
    with pytest.raises(ValueError, match="tree size 9"):
        consistency_proof(LEAF_HASHES, 1, 9)
    assert consistency_proof(LEAF_HASHES, 0) == []
    assert consistency_proof(LEAF_HASHES, 8) == []


def test_consistency_against_reference_all_small_trees() -> None:
    leaves = gen_leaves(40)
    tree = MerkleTree(leaves)
    roots = [ref_mth(leaves[:n]) for n in range(41)]
    for new in range(41):
        for old in range(new + 1):
            expected = ref_consistency(old, leaves[:new])
            assert consistency_proof(leaves, old, new) == expected
            assert tree.consistency_proof(old, new) == expected
            assert verify_consistency(old, new, roots[old], roots[new], expected)


# ---------------------------------------------------------------------------
# Compact range and MerkleTree mechanics


def test_compact_range_serialization() -> None:
    leaves = gen_leaves(77)
    cr = CompactRange()
    for size in range(78):
        blob = cr.to_bytes()
        assert len(blob) == 9 + 32 * size.bit_count()
        restored = CompactRange.from_bytes(blob)
        assert restored == cr
        assert restored.root() == cr.root()
        assert CompactRange.from_frontier(cr.size, list(cr.frontier)) == cr
        if size < 77:
            cr.append(leaves[size])
    # A restored range keeps appending as if it had never been stored.
    resumed = CompactRange.from_bytes(CompactRange.from_frontier(5, [NODE_HASHES[2][0], NODE_HASHES[0][4]]).to_bytes())
    resumed.extend(LEAF_HASHES[5:])
    assert resumed.root() == ROOTS[8]
    assert hash(resumed) == hash(CompactRange.from_frontier(8, [ROOTS[8]]))
    assert "size=8" in repr(resumed)


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"\x01" + (0).to_bytes(7, "big"),
        b"\x02" + (0).to_bytes(8, "big"),
        b"\x01" + (1).to_bytes(8, "big"),
        b"\x01" + (1).to_bytes(8, "big") + b"\x00" * 31,
        b"\x01" + (3).to_bytes(8, "big") + b"\x00" * 32,
        b"\x01" + (0).to_bytes(8, "big") + b"\x00" * 32,
    ],
)
def test_compact_range_from_bytes_rejects(blob: bytes) -> None:
    with pytest.raises(ValueError):
        CompactRange.from_bytes(blob)


def test_compact_range_from_frontier_rejects() -> None:
    with pytest.raises(ValueError, match="2 frontier hashes"):
        CompactRange.from_frontier(3, [SOME_HASH])
    with pytest.raises(ValueError, match="not 32 bytes"):
        CompactRange.from_frontier(1, [b"short"])
    with pytest.raises(ValueError, match="invalid tree size"):
        CompactRange.from_frontier(-1, [])


def test_compact_range_bad_append_is_atomic() -> None:
    cr = CompactRange()
    cr.extend(LEAF_HASHES[:3])
    before = cr.copy()
    with pytest.raises(ValueError):
        cr.extend([LEAF_HASHES[3], b"bad"])
    assert cr == before
    assert cr != "not a range"


def test_merkle_tree_incremental_matches_bulk() -> None:
    leaves = gen_leaves(1000, b"inc")
    bulk = MerkleTree(leaves)
    chunked = MerkleTree()
    start = 0
    for step in (1, 2, 3, 5, 8, 13, 100, 1, 255, 612):
        chunked.extend(leaves[start : start + step])
        start += step
        assert chunked.size == start
        assert chunked.root() == bulk.root(start)
    assert chunked._levels == bulk._levels  # same packed storage either way
    assert bulk.leaf_hash(999) == leaves[999]
    assert bulk.inclusion_proof(777) == inclusion_proof(leaves, 777)
    assert bulk.consistency_proof(333, 999) == consistency_proof(leaves, 333, 999)
    with pytest.raises(ValueError):
        bulk.extend([b"x" * 31])
    assert bulk.size == 1000


def test_merkle_tree_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    # Large inputs are added in batches; shrink the batch to cross many boundaries.
    monkeypatch.setattr(MerkleTree, "_BATCH", 7)
    leaves = gen_leaves(300, b"batch")
    for source in (leaves, tuple(leaves), iter(leaves)):
        tree = MerkleTree(source)
        assert [tree.root(n) for n in range(301)] == [ref_mth(leaves[:n]) for n in range(301)]
    tree = MerkleTree(leaves[:5])
    with pytest.raises(ValueError, match="leaf hash #25"):
        tree.extend([*leaves[5:25], b"bad"])
    assert tree.size == 5


# ---------------------------------------------------------------------------
# Properties


@settings(max_examples=40, deadline=None)
@given(size=st.integers(min_value=1, max_value=300), salt=st.binary(max_size=8), data=st.data())
def test_property_inclusion(size: int, salt: bytes, data: st.DataObject) -> None:
    leaves = gen_leaves(size, salt)
    tree = MerkleTree(leaves)
    root = tree.root()
    assert root == root_from_leaf_hashes(leaves)
    proofs = [tree.inclusion_proof(i) for i in range(size)]
    for i, proof in enumerate(proofs):
        assert verify_inclusion(leaves[i], i, size, proof, root)

    index = data.draw(st.integers(0, size - 1), label="index")
    proof = proofs[index]
    assert proof == inclusion_proof(leaves, index)
    if proof:
        elem = data.draw(st.integers(0, len(proof) - 1), label="element")
        pos = data.draw(st.integers(0, 31), label="byte")
        bad = list(proof)
        bad[elem] = flip(bad[elem], pos, 0x01)
        assert not verify_inclusion(leaves[index], index, size, bad, root)
    assert not verify_inclusion(flip(leaves[index], 31, 0x80), index, size, proof, root)
    assert not verify_inclusion(leaves[index], index, size, proof, flip(root, 0, 0x01))
    # Another index never verifies with this leaf and proof: the path's left/right
    # pattern identifies the leaf position uniquely.
    for other in range(size):
        if other != index:
            assert not verify_inclusion(leaves[index], other, size, proof, root)
    # A wrong tree size is rejected unless it gives exactly the same path shape
    # (same length, same sibling sides): a proof cannot bind the size on its own,
    # which is why the size is part of the signed checkpoint.
    for wrong in range(index + 1, 2 * size + 2):
        if wrong == size:
            continue
        same_shape = ref_sides(index, wrong) == ref_sides(index, size)
        assert verify_inclusion(leaves[index], index, wrong, proof, root) is same_shape
    assert not verify_inclusion(leaves[index], index, size * 2, proof, root)


@settings(max_examples=40, deadline=None)
@given(size=st.integers(min_value=1, max_value=300), salt=st.binary(max_size=8), data=st.data())
def test_property_consistency(size: int, salt: bytes, data: st.DataObject) -> None:
    leaves = gen_leaves(size, salt)
    tree = MerkleTree(leaves)
    roots = [tree.root(n) for n in range(size + 1)]
    new_root = roots[size]
    for old in range(size + 1):
        proof = tree.consistency_proof(old)
        assert verify_consistency(old, size, roots[old], new_root, proof)

    old = data.draw(st.integers(0, size), label="old")
    proof = tree.consistency_proof(old)
    assert proof == consistency_proof(leaves, old)
    if proof:
        elem = data.draw(st.integers(0, len(proof) - 1), label="element")
        pos = data.draw(st.integers(0, 31), label="byte")
        bad = list(proof)
        bad[elem] = flip(bad[elem], pos, 0x01)
        assert not verify_consistency(old, size, roots[old], new_root, bad)
        assert not verify_consistency(old, size, roots[old], new_root, proof[:-1])
        assert not verify_consistency(old, size, roots[old], new_root, [*proof, SOME_HASH])
        assert not verify_consistency(old, size, flip(roots[old]), new_root, proof)
        assert not verify_consistency(old, size, roots[old], flip(new_root), proof)
        # Any other old size, with its own correct root, fails with this proof.
        for wrong in range(1, size):
            if wrong != old:
                assert not verify_consistency(wrong, size, roots[wrong], new_root, proof), wrong
    # As with inclusion, a wrong new size is rejected unless the proof shape is identical.
    if 0 < old < size:
        for wrong in range(old + 1, 2 * size + 2):
            if wrong != size:
                same_shape = ref_consistency_shape(old, wrong) == ref_consistency_shape(old, size)
                assert verify_consistency(old, wrong, roots[old], new_root, proof) is same_shape, wrong
        assert not verify_consistency(old, size * 2, roots[old], new_root, proof)
    # A tree that rewrote history is caught: change one leaf below old_size.
    if old:
        victim = data.draw(st.integers(0, old - 1), label="victim")
        forged = list(leaves)
        forged[victim] = leaf_hash(b"forged")
        forged_tree = MerkleTree(forged)
        forged_proof = forged_tree.consistency_proof(old)
        assert not verify_consistency(old, size, roots[old], forged_tree.root(), forged_proof)


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(min_value=0, max_value=40), max_size=8), salt=st.binary(max_size=4))
def test_property_compact_range_matches_root(sizes: list[int], salt: bytes) -> None:
    cr = CompactRange()
    leaves: list[bytes] = []
    for n in sizes:
        chunk = gen_leaves(n, salt + len(leaves).to_bytes(4, "big"))
        leaves += chunk
        cr.extend(chunk)
        assert cr.size == len(leaves)
        assert cr.root() == root_from_leaf_hashes(leaves) == ref_mth(leaves)
        cr = CompactRange.from_bytes(cr.to_bytes())


def top_level_imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative import"
            names.add((node.module or "").split(".")[0])
    return names


def test_module_is_self_contained() -> None:
    # Shipped verbatim in evidence packs: standard library only.
    imports = top_level_imports(Path(merkle.__file__))
    assert imports <= set(sys.stdlib_module_names) | {"__future__"}, imports


@pytest.mark.parametrize(("before", "after"), [(0, 0), (0, 13), (8, 8), (16, 5), (64, 64), (96, 31), (4, 3)])
def test_appending_an_aligned_range_by_its_frontier_equals_appending_its_leaves(before: int, after: int) -> None:
    leaves = [merkle.leaf_hash(b"%d" % i) for i in range(before + after)]
    joined = merkle.CompactRange()
    joined.extend(leaves[:before])
    part = merkle.CompactRange()
    part.extend(leaves[before:])
    joined.append_range(part)
    assert joined.size == before + after
    assert joined.root() == merkle.root_from_leaf_hashes(leaves)
    assert joined.frontier == _compact(leaves).frontier


def test_a_range_that_is_not_aligned_is_refused() -> None:
    tree = _compact([merkle.leaf_hash(b"a")] * 6)
    part = _compact([merkle.leaf_hash(b"b")] * 4)
    with pytest.raises(ValueError, match="not aligned"):
        tree.append_range(part)
    assert tree.size == 6


def _compact(leaves: list[bytes]) -> merkle.CompactRange:
    cr = merkle.CompactRange()
    cr.extend(leaves)
    return cr
