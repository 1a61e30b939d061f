"""Encryption of secrets kept in the database (vCenter passwords, guest passwords).

Fernet (AES-128-CBC + HMAC) from the cryptography package; the key is derived from
settings.FIELD_ENCRYPTION_KEY, so a database dump alone does not reveal the secrets.
"""

from __future__ import annotations

import base64
import hashlib
from functools import cache
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings
from django.db import models


@cache
def _fernet(key: str) -> Fernet:
    digest = hashlib.sha256(b"vmportal-field-encryption:" + key.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


def encrypt(plaintext: str) -> str:
    return _fernet(settings.FIELD_ENCRYPTION_KEY).encrypt(plaintext.encode()).decode()


def decrypt(token: str) -> str:
    try:
        return _fernet(settings.FIELD_ENCRYPTION_KEY).decrypt(token.encode()).decode()
    except InvalidToken:
        raise ValueError(
            "A stored secret cannot be decrypted: VMPORTAL_ENCRYPTION_KEY (or SECRET_KEY) "
            "changed since it was saved. Enter the secret again."
        ) from None


class Secret(str):
    """A str whose repr never shows the value, so it cannot leak through logs or tracebacks."""

    def __repr__(self) -> str:
        return "Secret('********')"


class EncryptedTextField(models.TextField):
    """Stores ciphertext; Python code sees a Secret (or "")."""

    def from_db_value(self, value: str | None, expression: Any, connection: Any) -> Secret | str:
        if not value:
            return ""
        return Secret(decrypt(value))

    def to_python(self, value: Any) -> Secret | str:
        if isinstance(value, Secret) or not value:
            return value or ""
        return Secret(value)

    def get_prep_value(self, value: Any) -> str:
        if not value:
            return ""
        return encrypt(str(value))
