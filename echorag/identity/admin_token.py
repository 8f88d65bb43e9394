"""The admin token: from ``ECHORAG_ADMIN_TOKEN``, or generated once and kept in the data dir.

The service never runs its admin routes open: with no token configured, the first
process to start writes a random one to ``<data_dir>/admin_token`` (mode 0600) and
every replica reads the same file.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
import time
from pathlib import Path

logger = logging.getLogger(__name__)

TOKEN_FILE = "admin_token"


def ensure_admin_token(data_dir: Path, configured: str | None) -> str:
    if configured:
        return configured
    path = Path(data_dir) / TOKEN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(50):  # another replica may be writing it this very moment
            if token := path.read_text(encoding="utf-8").strip():
                return token
            time.sleep(0.1)
        raise RuntimeError(f"{path} is empty: delete it or set ECHORAG_ADMIN_TOKEN")
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(token + "\n")
    logger.warning("No ECHORAG_ADMIN_TOKEN set: generated one in %s (owner-only).", path)
    return token


def token_matches(presented: str | None, expected: str) -> bool:
    """Constant-time comparison, so response timing reveals nothing about the token."""
    return presented is not None and hmac.compare_digest(presented.encode(), expected.encode())
