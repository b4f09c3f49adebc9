"""Check an evidence pack without the portal: ``python verify.py PACK.zip``.

Needs only Python 3.11+ and the ``cryptography`` package; it imports nothing else, and it
ships inside every pack as ``verify.py``. It checks, and prints, each of these:

1. the public key (and, with ``--fingerprint``, that it is the one you were given);
2. ``manifest.json.jws``: a JWS (EdDSA / Ed25519) whose payload is exactly ``manifest.json``;
3. every file against its SHA-256 in the manifest, with no file missing and none added;
4. the signed ledger checkpoint (a C2SP signed note) with the portal's key;
5. each ledger entry: its leaf hash, recomputed from the entry bytes, is included in that
   checkpoint's Merkle tree (RFC 9162 inclusion proof);
6. the ledger is an extension of the checkpoint this regulator received before (RFC 9162
   consistency proof) and, with ``--previous-checkpoint``, of the copy you kept yourself;
7. each deletion certificate's signature (JWS over its JSON document).

Exit status 0 when every check passes, 1 when any fails.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import sys
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

MANIFEST = "manifest.json"
SIGNATURE = "manifest.json.jws"
PUBLIC_KEY = "public-key.pem"
CHECKPOINT = "ledger/checkpoint.txt"
PREVIOUS_CHECKPOINT = "ledger/previous-checkpoint.txt"
VERIFIER_KEY = "ledger/verifier-key.txt"
ENTRIES = "ledger/entries.ndjson"
PROOFS = "ledger/proofs.json"
CERTIFICATES = "certificates/"
UNSIGNED = (MANIFEST, SIGNATURE)  # the manifest cannot list itself or its signature
ED25519_NOTE_TYPE = 0x01
SIGNATURE_PREFIX = "\u2014 "  # an em dash and a space start each signed-note signature line


class PackError(ValueError):
    """A check failed; the message says what is wrong."""


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes


# ---------------------------------------------------------------------- encodings


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def fingerprint(public: Ed25519PublicKey) -> str:
    """SHA-256 of the raw 32-byte key, hex in groups of four (as the portal shows it)."""
    digest = hashlib.sha256(public.public_bytes_raw()).hexdigest()
    return " ".join(digest[i : i + 4] for i in range(0, len(digest), 4))


def _hash(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


# ---------------------------------------------------------------------- JWS (RFC 7515, EdDSA per RFC 8037)


def verify_jws(token: str, public: Ed25519PublicKey) -> bytes:
    """The payload of a compact JWS signed with EdDSA by ``public``; PackError otherwise."""
    parts = token.strip().split(".")
    if len(parts) != 3:
        raise PackError("the signature is not a compact JWS (three base64url parts)")
    try:
        header = json.loads(b64url_decode(parts[0]))
        payload, signature = b64url_decode(parts[1]), b64url_decode(parts[2])
    except ValueError as exc:
        raise PackError(f"the JWS is malformed: {exc}") from None
    if not isinstance(header, dict) or header.get("alg") != "EdDSA":
        raise PackError(
            f"the JWS algorithm must be EdDSA, not {header.get('alg') if isinstance(header, dict) else '?'}"
        )
    if header.get("b64") is False or "crit" in header:
        raise PackError("the JWS uses header extensions this verifier does not accept")
    try:
        public.verify(signature, f"{parts[0]}.{parts[1]}".encode("ascii"))
    except InvalidSignature:
        raise PackError("the JWS signature does not verify with the pack's public key") from None
    return payload


# ---------------------------------------------------------------------- signed notes (C2SP)


def parse_verifier_key(vkey: str) -> tuple[str, bytes, Ed25519PublicKey]:
    """``<name>+<hex key id>+<base64(0x01 || key)>`` into (name, key id, key), checking the id."""
    parts = vkey.strip().split("+", 2)
    if len(parts) != 3:
        raise PackError("the verifier key is not <name>+<key id>+<key>")
    name, hex_id, encoded = parts
    raw = base64.b64decode(encoded, validate=True)
    if len(raw) != 33 or raw[0] != ED25519_NOTE_TYPE:
        raise PackError("the verifier key is not an Ed25519 key")
    key_id = _hash(name.encode() + b"\n" + raw)[:4]
    if key_id.hex() != hex_id.lower():
        raise PackError("the verifier key's id does not match its name and key")
    return name, key_id, Ed25519PublicKey.from_public_bytes(raw[1:])


def verify_note(note: bytes, vkey: str) -> bytes:
    """The signed text of a note, if a signature line by ``vkey`` verifies over it."""
    name, key_id, public = parse_verifier_key(vkey)
    text = note.decode("utf-8")
    split = text.rfind("\n\n")
    if split < 0 or not text.endswith("\n"):
        raise PackError("the checkpoint is not a signed note (no blank line before the signatures)")
    body, lines = text[: split + 1], text[split + 2 : -1].split("\n")
    for line in lines:
        if not line.startswith(SIGNATURE_PREFIX):
            raise PackError("a signature line of the checkpoint is malformed")
        signer, _, encoded = line[len(SIGNATURE_PREFIX) :].partition(" ")
        raw = base64.b64decode(encoded, validate=True)
        if signer != name or raw[:4] != key_id:
            continue
        try:
            public.verify(raw[4:], body.encode())
        except InvalidSignature:
            raise PackError(f"the checkpoint signature by {name} does not verify") from None
        return body.encode()
    raise PackError(f"the checkpoint carries no signature by {name}+{key_id.hex()}")


def parse_checkpoint(body: bytes) -> Checkpoint:
    lines = body.decode("utf-8").rstrip("\n").split("\n")
    if len(lines) < 3 or not lines[1].isdigit():
        raise PackError("the checkpoint body is not origin, tree size and root hash")
    root = base64.b64decode(lines[2], validate=True)
    if len(root) != 32:
        raise PackError("the checkpoint root hash is not 32 bytes")
    return Checkpoint(lines[0], int(lines[1]), root)


def verify_checkpoint(note: bytes, vkey: str) -> Checkpoint:
    checkpoint = parse_checkpoint(verify_note(note, vkey))
    if checkpoint.origin != parse_verifier_key(vkey)[0]:
        raise PackError(f"the checkpoint is for the log {checkpoint.origin!r}, not this portal's")
    return checkpoint


# ---------------------------------------------------------------------- Merkle proofs (RFC 9162 section 2.1)


def leaf_hash(entry: bytes) -> bytes:
    return _hash(b"\x00" + entry)


def _node(left: bytes, right: bytes) -> bytes:
    return _hash(b"\x01" + left + right)


def verify_inclusion(leaf: bytes, index: int, size: int, path: Sequence[bytes], root: bytes) -> bool:
    """RFC 9162 section 2.1.3.2."""
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = _node(p, r)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = _node(r, p)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and r == root


def verify_consistency(old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]) -> bool:
    """RFC 9162 section 2.1.4.2."""
    if old_size > new_size:
        return False
    if old_size == new_size:
        return not proof and old_root == new_root
    if old_size == 0:
        return not proof
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # a power of two: the old root is itself a node of the new tree
        path.insert(0, old_root)
    if not path:
        return False
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = _node(c, fr), _node(c, sr)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = _node(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return fr == old_root and sr == new_root and sn == 0


# ---------------------------------------------------------------------- the checks


class _Pack:
    def __init__(self, data: bytes) -> None:
        try:
            archive = zipfile.ZipFile(io.BytesIO(data))
            self.files = {info.filename: archive.read(info) for info in archive.infolist() if not info.is_dir()}
        except (zipfile.BadZipFile, OSError) as exc:
            raise PackError(f"the pack is not a readable ZIP file: {exc}") from None

    def read(self, name: str) -> bytes:
        if name not in self.files:
            raise PackError(f"{name} is missing from the pack")
        return self.files[name]

    def json(self, name: str) -> Any:
        try:
            return json.loads(self.read(name))
        except ValueError as exc:
            raise PackError(f"{name} is not valid JSON: {exc}") from None


@dataclass
class _State:
    public: Ed25519PublicKey | None = None
    manifest: dict[str, Any] | None = None
    checkpoint: Checkpoint | None = None


def check_public_key(pack: _Pack, state: _State, expected: str | None) -> str:
    try:
        public = load_pem_public_key(pack.read(PUBLIC_KEY))
    except ValueError as exc:
        raise PackError(f"{PUBLIC_KEY} is not a PEM public key: {exc}") from None
    if not isinstance(public, Ed25519PublicKey):
        raise PackError(f"{PUBLIC_KEY} is not an Ed25519 key")
    state.public = public  # set first: the other checks still run and report against this key
    found = fingerprint(public)
    if expected is not None and expected.replace(" ", "").lower() != found.replace(" ", ""):
        raise PackError(f"the pack was signed with a different key: fingerprint {found}, expected {expected}")
    return f"Ed25519 key, fingerprint {found}" + (
        " (as expected)" if expected else " (compare it with the one you were given)"
    )


def check_manifest_signature(pack: _Pack, state: _State) -> str:
    if state.public is None:
        raise PackError("no public key to check the signature with")
    payload = verify_jws(pack.read(SIGNATURE).decode("ascii", "replace"), state.public)
    if payload != pack.read(MANIFEST):
        raise PackError(f"{SIGNATURE} is a valid signature, but over different content than {MANIFEST}")
    state.manifest = pack.json(MANIFEST)
    return f"{SIGNATURE} is the portal's signature over exactly {MANIFEST}"


def check_files(pack: _Pack, state: _State) -> str:
    listed = (state.manifest or {}).get("files")
    if not isinstance(listed, dict):
        raise PackError(f"{MANIFEST} has no list of files")
    problems = []
    for name, meta in sorted(listed.items()):
        if name not in pack.files:
            problems.append(f"{name} is listed in the manifest but missing from the pack")
        elif hashlib.sha256(pack.files[name]).hexdigest() != meta.get("sha256"):
            problems.append(f"{name} was changed: its SHA-256 differs from the manifest")
    for name in sorted(set(pack.files) - set(listed) - set(UNSIGNED)):
        problems.append(f"{name} was added: it is not in the signed manifest")
    if problems:
        raise PackError("; ".join(problems))
    return f"all {len(listed)} files match their SHA-256 in the manifest; none missing, none added"


def check_checkpoint(pack: _Pack, state: _State) -> str:
    vkey = pack.read(VERIFIER_KEY).decode().strip()
    _name, _kid, note_key = parse_verifier_key(vkey)
    if state.public is None or note_key.public_bytes_raw() != state.public.public_bytes_raw():
        raise PackError(f"{VERIFIER_KEY} is not the key in {PUBLIC_KEY}: the pack mixes two signers")
    state.checkpoint = verify_checkpoint(pack.read(CHECKPOINT), vkey)
    checkpoint = state.checkpoint
    return f"signed checkpoint of {checkpoint.origin}: {checkpoint.size} entries, root {checkpoint.root.hex()}"


def check_inclusion(pack: _Pack, state: _State) -> str:
    if state.checkpoint is None:
        raise PackError("no verified checkpoint to prove entries against")
    proofs = pack.json(PROOFS)
    if proofs.get("tree_size") != state.checkpoint.size:
        raise PackError(
            f"{PROOFS} is for a tree of {proofs.get('tree_size')} entries, the checkpoint has {state.checkpoint.size}"
        )
    inclusion = {int(seq): path for seq, path in proofs.get("inclusion", {}).items()}
    lines = [line for line in pack.read(ENTRIES).split(b"\n") if line]
    for line in lines:
        seq = json.loads(line).get("seq")
        if not isinstance(seq, int) or seq not in inclusion:
            raise PackError(f"ledger entry {seq} has no inclusion proof")
        path = [bytes.fromhex(node) for node in inclusion.pop(seq)]
        if not verify_inclusion(leaf_hash(line), seq, state.checkpoint.size, path, state.checkpoint.root):
            raise PackError(
                f"ledger entry {seq} is not in the signed ledger (its inclusion proof fails): it was altered"
            )
    if inclusion:
        raise PackError(f"proofs are given for entries the pack does not contain: {sorted(inclusion)}")
    return f"{len(lines)} ledger entries are each included in the signed checkpoint"


def check_consistency(pack: _Pack, state: _State, kept: bytes | None) -> str:
    if state.checkpoint is None:
        raise PackError("no verified checkpoint to prove consistency with")
    vkey = pack.read(VERIFIER_KEY).decode().strip()
    new = state.checkpoint
    consistency = pack.json(PROOFS).get("consistency")
    mine = _kept_checkpoint(kept, vkey)
    if consistency is None:
        if mine is not None and (mine.size != new.size or mine.root != new.root):
            raise PackError(f"the pack proves nothing about your checkpoint at size {mine.size}")
        return "first pack for this regulator: keep ledger/checkpoint.txt, the next pack proves it extends it"
    old = verify_checkpoint(pack.read(PREVIOUS_CHECKPOINT), vkey)
    if mine is not None and (mine.size, mine.root) != (old.size, old.root):
        raise PackError(
            f"the ledger was rewritten since your last checkpoint: you kept size {mine.size} root {mine.root.hex()}, "
            f"the pack starts from size {old.size} root {old.root.hex()}"
        )
    proof = [bytes.fromhex(node) for node in consistency.get("proof", [])]
    if consistency.get("from_size") != old.size or not verify_consistency(
        old.size, new.size, old.root, new.root, proof
    ):
        raise PackError(
            f"the ledger was rewritten since the checkpoint at size {old.size} you received: "
            f"the consistency proof to size {new.size} fails"
        )
    witness = " (the copy you kept)" if mine is not None else ""
    return f"the ledger at size {new.size} extends the checkpoint at size {old.size} you received{witness}"


def _kept_checkpoint(kept: bytes | None, vkey: str) -> Checkpoint | None:
    if kept is None:
        return None
    try:
        return verify_checkpoint(kept, vkey)
    except PackError as exc:
        raise PackError(f"the checkpoint you kept does not verify with this pack's key: {exc}") from None


def check_certificates(pack: _Pack, state: _State) -> str:
    if state.public is None:
        raise PackError("no public key to check certificates with")
    names = sorted(name for name in pack.files if name.startswith(CERTIFICATES))
    for name in names:
        signed = pack.json(name)
        payload = json.loads(verify_jws(str(signed.get("jws", "")), state.public))
        if payload != signed.get("document"):
            raise PackError(f"{name}: the certificate differs from what was signed")
    return f"{len(names)} deletion certificate(s) carry the portal's valid signature"


def verify_pack(
    data: bytes, *, fingerprint: str | None = None, previous_checkpoint: bytes | None = None
) -> list[Check]:
    """Every check, in order; a check that cannot run because an earlier one failed fails too."""
    try:
        pack = _Pack(data)
    except PackError as exc:
        return [Check("pack", False, str(exc))]
    state = _State()
    steps: list[tuple[str, Callable[[], str]]] = [
        ("public key", lambda: check_public_key(pack, state, fingerprint)),
        ("manifest signature", lambda: check_manifest_signature(pack, state)),
        ("file hashes", lambda: check_files(pack, state)),
        ("ledger checkpoint", lambda: check_checkpoint(pack, state)),
        ("ledger inclusion", lambda: check_inclusion(pack, state)),
        ("ledger consistency", lambda: check_consistency(pack, state, previous_checkpoint)),
        ("deletion certificates", lambda: check_certificates(pack, state)),
    ]
    results = []
    for name, run in steps:
        try:
            results.append(Check(name, True, run()))
        except (PackError, ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            results.append(Check(name, False, str(exc)))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Verify a portal evidence pack offline.")
    parser.add_argument("pack", help="the evidence pack ZIP")
    parser.add_argument("--fingerprint", help="the portal key fingerprint you were given (spaces optional)")
    parser.add_argument("--previous-checkpoint", help="the ledger/checkpoint.txt you kept from your last pack")
    args = parser.parse_args(argv)
    data = Path(args.pack).read_bytes()
    kept = Path(args.previous_checkpoint).read_bytes() if args.previous_checkpoint else None
    results = verify_pack(data, fingerprint=args.fingerprint, previous_checkpoint=kept)
    for check in results:
        print(f"{'PASS' if check.ok else 'FAIL'}  {check.name}: {check.detail}")
    failed = [check for check in results if not check.ok]
    print("Every check passed." if not failed else f"{len(failed)} check(s) failed: do not rely on this pack.")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
