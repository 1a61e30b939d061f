"""Per-VM passwords, their crypt(3) hashes, and SSH public keys.

A guest only ever needs the SHA-512 crypt hash of its password (cloud-init's
``hashed_passwd``, ``chpasswd -e`` in a customisation script), so the plain text never
leaves vmportal except to the lease holder, and never to vCenter for Linux guests.
Python's ``crypt`` module is gone in 3.13, hence the small implementation below
(Ulrich Drepper's "Unix crypt using SHA-256 and SHA-512", the $6$ scheme).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import secrets
import string
import struct
from dataclasses import dataclass

PASSWORD_ALPHABET = string.ascii_letters + string.digits
PASSWORD_LENGTH = 20  # ~119 bits


def new_password(length: int = PASSWORD_LENGTH) -> str:
    """A random password of letters and digits: nothing a shell, YAML or sysprep escapes."""
    while True:
        pw = "".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(length))
        # Windows' default policy wants three character classes.
        if any(c.islower() for c in pw) and any(c.isupper() for c in pw) and any(c.isdigit() for c in pw):
            return pw


_CRYPT64 = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# Byte order of the final SHA-512 digest in the $6$ encoding, three bytes at a time.
_SHA512_ORDER = [
    (0, 21, 42), (22, 43, 1), (44, 2, 23), (3, 24, 45), (25, 46, 4), (47, 5, 26), (6, 27, 48),
    (28, 49, 7), (50, 8, 29), (9, 30, 51), (31, 52, 10), (53, 11, 32), (12, 33, 54), (34, 55, 13),
    (56, 14, 35), (15, 36, 57), (37, 58, 16), (59, 17, 38), (18, 39, 60), (40, 61, 19), (62, 20, 41),
]


def _b64_from_24bit(b2: int, b1: int, b0: int, n: int) -> str:
    w = (b2 << 16) | (b1 << 8) | b0
    out = []
    for _ in range(n):
        out.append(_CRYPT64[w & 0x3F])
        w >>= 6
    return "".join(out)


def sha512_crypt(password: str, salt: str | None = None, rounds: int = 5000) -> str:
    """``$6$salt$hash``, as glibc's crypt(3) makes it."""
    salt = (salt if salt is not None else "".join(secrets.choice(_CRYPT64) for _ in range(16)))[:16]
    pw, s = password.encode(), salt.encode()
    b = hashlib.sha512(pw + s + pw).digest()
    a = hashlib.sha512(pw + s)
    n = len(pw)
    while n > 64:
        a.update(b)
        n -= 64
    a.update(b[:n])
    n = len(pw)
    while n:
        a.update(b if n & 1 else pw)
        n >>= 1
    a_digest = a.digest()
    dp = hashlib.sha512(pw * len(pw)).digest()
    p = (dp * (len(pw) // 64 + 1))[: len(pw)]
    ds = hashlib.sha512(s * (16 + a_digest[0])).digest()
    sb = (ds * (len(s) // 64 + 1))[: len(s)]
    c = a_digest
    for i in range(rounds):
        h = hashlib.sha512()
        h.update(p if i & 1 else c)
        if i % 3:
            h.update(sb)
        if i % 7:
            h.update(p)
        h.update(c if i & 1 else p)
        c = h.digest()
    encoded = "".join(_b64_from_24bit(c[x], c[y], c[z], 4) for x, y, z in _SHA512_ORDER)
    encoded += _b64_from_24bit(0, 0, c[63], 2)
    prefix = "$6$" if rounds == 5000 else f"$6$rounds={rounds}$"
    return f"{prefix}{salt}${encoded}"


# ---------------------------------------------------------------- SSH public keys

KEY_TYPES = {
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
}
MIN_RSA_BITS = 2048
_COMMENT = re.compile(r"[\x20-\x7e]*")  # fullmatch: no newline may slip in


class InvalidKey(ValueError):
    """An SSH public key we refuse, with a sentence saying why."""


@dataclass(frozen=True)
class PublicKey:
    kind: str
    blob: str  # base64, as in the file
    comment: str

    @property
    def line(self) -> str:
        return f"{self.kind} {self.blob}" + (f" {self.comment}" if self.comment else "")

    @property
    def fingerprint(self) -> str:
        digest = hashlib.sha256(base64.b64decode(self.blob)).digest()
        return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def _read_string(data: bytes, offset: int) -> tuple[bytes, int]:
    if offset + 4 > len(data):
        raise InvalidKey("The key data is truncated.")
    (length,) = struct.unpack(">I", data[offset : offset + 4])
    end = offset + 4 + length
    if end > len(data):
        raise InvalidKey("The key data is truncated.")
    return data[offset + 4 : end], end


def parse_public_key(text: str) -> PublicKey:
    """One OpenSSH public key line (``ssh-ed25519 AAAA... comment``), checked."""
    line = " ".join(text.strip().split())
    if not line:
        raise InvalidKey("Paste a public key.")
    if "PRIVATE KEY" in line:
        raise InvalidKey("This is a private key. Never share it: paste the .pub file (e.g. ~/.ssh/id_ed25519.pub).")
    if "\n" in text.strip():
        raise InvalidKey("Paste one key per entry.")
    parts = line.split(" ", 2)
    if parts[0] not in KEY_TYPES:
        if any(p in KEY_TYPES for p in parts[1:2]):
            raise InvalidKey("Key options (from=, command=, ...) are not accepted; paste the key alone.")
        raise InvalidKey(
            f"'{parts[0][:40]}' is not a supported key type; use ssh-ed25519, ecdsa-sha2-* or ssh-rsa "
            f"(at least {MIN_RSA_BITS} bits)."
        )
    if len(parts) < 2:
        raise InvalidKey("The key has a type but no key data.")
    kind, blob = parts[0], parts[1]
    comment = parts[2] if len(parts) > 2 else ""
    try:
        data = base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidKey("The key data is not valid base64; was the key cut off when copying?") from None
    declared, offset = _read_string(data, 0)
    if declared.decode("ascii", "replace") != kind:
        raise InvalidKey(f"The key data is a {declared.decode('ascii', 'replace')[:40]!r} key, not {kind}.")
    if kind == "ssh-rsa":
        _, offset = _read_string(data, offset)  # e
        n, _ = _read_string(data, offset)
        bits = int.from_bytes(n, "big").bit_length()
        if bits < MIN_RSA_BITS:
            raise InvalidKey(f"This RSA key has {bits} bits; use at least {MIN_RSA_BITS} (or an ed25519 key).")
    elif kind == "ssh-ed25519":
        key, _ = _read_string(data, offset)
        if len(key) != 32:
            raise InvalidKey("The ed25519 key data has the wrong length.")
    if not _COMMENT.fullmatch(comment) or '"' in comment or "\\" in comment:
        raise InvalidKey("The key comment may only hold printable characters, without quotes or backslashes.")
    return PublicKey(kind=kind, blob=blob, comment=comment)


def parse_key_lines(text: str) -> list[PublicKey]:
    """Several keys, one per line (blank lines and # comments skipped)."""
    keys = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.strip().startswith("#"):
            continue
        try:
            keys.append(parse_public_key(line))
        except InvalidKey as exc:
            raise InvalidKey(f"Line {n}: {exc}") from None
    return keys
