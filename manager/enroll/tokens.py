"""Join tokens: their format, how their secret is kept and checked, and their status.

A token is ``<id>.<secret>`` (kubeadm's bootstrap-token shape): ``id`` is 6 characters
of ``[a-z0-9]``, public, the row's key and what logs and ``tokens list`` show; ``secret``
is 16 more (~82 bits), shown once by ``tokens create`` and stored only as its SHA-256.
A secret that random needs no slow hash: nobody can guess it from its digest.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string

from ..store.models import JoinToken

ID_LEN = 6
SECRET_LEN = 16
_ALPHABET = string.ascii_lowercase + string.digits
_TOKEN = re.compile(rf"([a-z0-9]{{{ID_LEN}}})\.([a-z0-9]{{{SECRET_LEN}}})")
_TOKEN_ID = re.compile(rf"[a-z0-9]{{{ID_LEN}}}")

# Token statuses (admin.proto JoinToken.status).
ACTIVE = "active"
EXPIRED = "expired"
USED = "used"
REVOKED = "revoked"

# A token that stopped working is listed (``tokens list --all``) this long, then deleted.
KEEP_STOPPED = 7 * 86400.0
# Node ids remembered per token (the most recent ones).
MAX_TOKEN_NODES = 100


def new_token() -> tuple[str, str]:
    """A fresh ``(id, secret)``."""
    return _random(ID_LEN), _random(SECRET_LEN)


def _random(length: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def parse_token(text: str) -> tuple[str, str] | None:
    """``(id, secret)`` of a well-formed token, else None."""
    match = _TOKEN.fullmatch(text.strip())
    return (match.group(1), match.group(2)) if match else None


def token_id_of(text: str) -> str:
    """The id part of something that looks like a token, for log lines ("" if none):
    never the secret."""
    head = text.strip().split(".", 1)[0]
    return head if _TOKEN_ID.fullmatch(head) else ""


def is_token_id(text: str) -> bool:
    return bool(_TOKEN_ID.fullmatch(text))


def secret_digest(secret: str) -> str:
    """What is stored of a secret: its SHA-256, hex."""
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, digest: str) -> bool:
    """Constant-time comparison of a presented secret with a stored digest."""
    return hmac.compare_digest(secret_digest(secret), digest)


def token_status(token: JoinToken, now: float) -> str:
    """``active``, ``expired``, ``used`` or ``revoked`` (revocation first: it was an
    operator's decision; then used up, then expired)."""
    if token.revoked_at:
        return REVOKED
    if token.max_uses and token.uses >= token.max_uses:
        return USED
    if token.expires_at <= now:
        return EXPIRED
    return ACTIVE
