"""Credentials out of what the pipeline prints and writes.

A tracking URI or a mirror URL may carry a password (``https://user:token@host``,
``postgresql://user:pass@host/db``) or a token in its query string. Outputs are pushed to
the DVC remote and logs end up in CI, so every URI is shown with its secrets as ``***``.
"""

import re

MASK = "***"

# scheme://user:password@ : the password runs to the last "@" before a space, as
# SQLAlchemy reads it (an unescaped "/" or "@" in it is masked too); the user name is kept
# to tell accounts apart.
_USERINFO = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/?#@]*):\S*@")
# ?token=..., &password=..., X-Amz-Signature=..., sig=... (SAS), api_key=...
_QUERY_SECRET = re.compile(
    r"([?&;][\w.-]*?(?:token|passw(?:or)?d|pwd|secret|sig|key|credential|auth)[\w.-]*=)"
    r"[^\s&#'\")]+",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """``text`` with the password of every URI in it, and secret query values, as ``***``.

    Works on a bare URI or on a message that quotes one; text without credentials (and
    ``sqlite:///`` or ``file://`` paths) comes back unchanged.
    """
    return _QUERY_SECRET.sub(rf"\1{MASK}", _USERINFO.sub(rf"\1:{MASK}@", text))
