"""One redaction function for every secret rag-lfm might otherwise write or print.

:func:`redact` takes a str (a URL, an error message, a log line), a dict or a list
(a source spec, a manifest section) and returns a copy in which secrets read ``***``:

* the password of a URL's user info, with or without a user name
  (``scheme://user:pw@host``, ``scheme://:pw@host``);
* the values of secret-looking query parameters (``?password=``, ``&token=``, ``api_key=`` ...);
* in dicts, the values of secret-looking keys (``password``, ``secret``, ``token``,
  ``api_key``, ``authorization``, ``credentials`` ...), at any depth, so
  ``engine_options={"connect_args": {"password": ...}}`` is covered.

It is applied where a value leaves the process: manifest.json, the doc store's record
of source specs, error messages (the CLI redacts every error it prints), web document
ids and metadata, the web connector's cache file. Secrets belong in the environment or
the user's own configuration (see SECURITY.md), never in an index directory.

Example:
    >>> redact("postgresql+psycopg://app:s3cret@db:5432/rag?sslpassword=x&sslmode=require")
    'postgresql+psycopg://app:***@db:5432/rag?sslpassword=***&sslmode=require'
    >>> redact({"url": "mysql://:pw@h/db", "engine_options": {"connect_args": {"password": "pw"}}})
    {'url': 'mysql://:***@h/db', 'engine_options': {'connect_args': {'password': '***'}}}
"""

from __future__ import annotations

import re
from typing import Any

MASK = "***"

# scheme://[user]:password@  -- up to the first '@' (an unencoded '/' in the password is masked too).
_USERINFO = re.compile(r"(?P<head>\b[a-zA-Z][\w+.-]*://[^:/@\s]*:)(?P<secret>[^@\s]+?)(?=@)")
# scheme://user@ with no password has nothing to hide; a bare token in the user part does:
# https://ghp_xxx@github.com/... -- masked when it looks like a token (long, no dots).
_TOKEN_USER = re.compile(r"(?P<head>\b(?:https?|git|ssh)://)(?P<secret>[A-Za-z0-9_\-]{20,})(?=@)")
# A key holding one of these anywhere in its name is secret: PGPASSWORD, client_secret, x-api-key, access_token...
_SECRET_PARTS = ("password", "passwd", "secret", "token", "apikey", "api_key", "access_key", "private_key", "credential")
# ... and these only as the whole name or its last part: pwd, x_auth, X-Amz-Signature.
_SECRET_NAMES = ("pwd", "pass", "auth", "authorization", "signature", "sig")
# key=value in a query string (or anywhere in a message): the value runs to & # ; white space or a quote.
_QUERY = re.compile(r"(?P<head>(?:[?&;]|\b)(?P<key>[A-Za-z_][\w.\-]*)=)(?P<secret>[^&#;\s'\"]+)")


def is_secret_key(name: str) -> bool:
    """True when a mapping key or query parameter name looks like it holds a secret.

    Example:
        >>> is_secret_key("PGPASSWORD"), is_secret_key("x-api-key"), is_secret_key("X-Amz-Signature"), is_secret_key("path")
        (True, True, True, False)
    """
    n = name.lower().replace("-", "_")
    return any(p in n for p in _SECRET_PARTS) or any(n == w or n.endswith("_" + w) for w in _SECRET_NAMES)


def _redact_str(text: str) -> str:
    text = _USERINFO.sub(lambda m: m.group("head") + MASK, text)
    text = _TOKEN_USER.sub(lambda m: m.group("head") + MASK, text)
    return _QUERY.sub(lambda m: m.group("head") + MASK if is_secret_key(m.group("key")) else m.group(0), text)


def redact(value: Any) -> Any:
    """A copy of ``value`` (str, dict, list, tuple or anything else) with secrets replaced by ``***``.

    Strings are scanned for URL passwords and secret query parameters; dict values under
    secret-looking keys are masked whole. Other types are returned unchanged.
    """
    if isinstance(value, str):
        return _redact_str(value)
    if isinstance(value, dict):
        return {k: (MASK if isinstance(k, str) and is_secret_key(k) and v not in (None, "") else redact(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    if isinstance(value, tuple):
        return tuple(redact(v) for v in value)
    return value


def has_secret(value: Any) -> bool:
    """True when :func:`redact` would change ``value`` (it holds something secret).

    Example:
        >>> has_secret("https://user:pw@example.org/"), has_secret("https://example.org/?q=1")
        (True, False)
    """
    return redact(value) != value
