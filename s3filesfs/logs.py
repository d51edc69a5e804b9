"""Logging for every command: the levels -q/-v/--debug choose, and no secret in any line.

One handler on the root logger writes to standard error, which is the terminal, the daemon's
journal or a background mount's log file. Its formatter redacts every line at every level:

* the values of the secrets in use (secret key, session token, the TCP listener's API key),
  registered with ``protect()`` as soon as the settings are known, wherever they came from;
* the credential parts that HTTP libraries print in their debug output and that no registry of
  values can know (keys from ``~/.aws`` or an instance role): ``Authorization`` and
  ``X-Amz-Security-Token`` headers, signatures, bearer keys, ``secret``/``token``/``password``
  values, a password inside a URL.

The HTTP libraries (botocore, urllib3, ...) stay at INFO under ``--debug``: their debug output is
the wire protocol, headers included, and is wanted only when asked for with ``--debug-http``
(redacted all the same). ``redact()`` is also applied to the error messages the CLI prints.
"""

from __future__ import annotations

import logging
import re
import sys
import threading

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
REDACTED = "****"
# Loggers whose debug output carries request headers or bodies.
HTTP_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3", "httpx", "httpcore", "uvicorn",
                "multipart", "python_multipart")
# Shorter values are not replaced wherever they occur: "abc" would blot out half the log.
MIN_SECRET_LENGTH = 6

QUIET, NORMAL, VERBOSE, DEBUG = -1, 0, 1, 2
_LEVELS = {QUIET: logging.ERROR, NORMAL: logging.WARNING, VERBOSE: logging.INFO, DEBUG: logging.DEBUG}

_secrets: set[str] = set()
_secrets_lock = threading.Lock()
_pattern: re.Pattern | None = None

_NAME = r"[\w-]*(?:secret|token|password|passwd|api[_-]?key|authorization|signature|credential)[\w-]*"
_REDACTIONS = [
    # `Bearer KEY`, `Basic …`, wherever they stand.
    (re.compile(r"(?i)\b(bearer|basic)(\s+)[A-Za-z0-9._~+/=-]+"), rf"\1\2{REDACTED}"),
    # `Authorization: AWS4-HMAC-SHA256 Credential=…, Signature=…`: the rest of the line.
    (re.compile(r"""(?im)\b((?:proxy-)?authorization\s*[:=]\s*)(?!b?['"])[^\r\n'"]+"""), rf"\1{REDACTED}"),
    # `'Authorization': b'AWS4-HMAC-SHA256 …'`, `"SessionToken": "…"`: a quoted value after a name.
    (re.compile(rf"""(?i)({_NAME}['"]?\s*[:=]\s*b?)(['"])(?:\\.|(?!\2).)*\2"""), rf"\1\2{REDACTED}\2"),
    # `x-amz-security-token:…` (canonical request), `Signature=…`, `Signature:\n…`: a bare value.
    (re.compile(rf"""(?i)({_NAME}\s*[:=]\s*)(?!b?['"]|\s)[^\s'",;&}}\]<>\\]+"""), rf"\1{REDACTED}"),
    # `<SecretAccessKey>…</SecretAccessKey>` in an XML response body.
    (re.compile(rf"(?i)<({_NAME})>[^<]*</\1>"), rf"<\1>{REDACTED}</\1>"),
    # `scheme://user:password@host`.
    (re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://[^/\s:@'\"]*:)[^/\s@'\"]+@"), rf"\1{REDACTED}@"),
]


def protect(*values: str | None) -> None:
    """Never let these values reach a log line or a printed error (None and short values are ignored)."""
    global _pattern
    with _secrets_lock:
        added = {v for v in values if isinstance(v, str) and len(v.strip()) >= MIN_SECRET_LENGTH}
        if added - _secrets:
            _secrets.update(added)
            # Longest first, so a secret that contains another is replaced whole.
            ordered = sorted(_secrets, key=len, reverse=True)
            _pattern = re.compile("|".join(re.escape(v) for v in ordered))


def redact(text: str) -> str:
    """``text`` with every registered secret and every credential-shaped value replaced."""
    pattern = _pattern
    if pattern is not None:
        text = pattern.sub(REDACTED, text)
    for regex, replacement in _REDACTIONS:
        text = regex.sub(replacement, text)
    return text


class RedactingFormatter(logging.Formatter):
    """Formats as usual (message, traceback, stack), then redacts the whole line."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def setup(verbosity: int = NORMAL, http_debug: bool = False) -> None:
    """Log to standard error at the level ``verbosity`` chooses (QUIET..DEBUG), redacted.

    Safe to call more than once: the handler is added once, levels are set again.
    """
    root = logging.getLogger()
    if not any(isinstance(h.formatter, RedactingFormatter) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(RedactingFormatter(FORMAT))
        root.addHandler(handler)
    level = _LEVELS[verbosity]
    root.setLevel(level)
    for name in HTTP_LOGGERS:
        # Explicit levels: an HTTP library's DEBUG is its requests, headers and all.
        logging.getLogger(name).setLevel(logging.DEBUG if http_debug else max(level, logging.INFO))


def at_least_info(verbosity: int, logger: str = "") -> None:
    """A service's log is its journal: INFO for ``logger`` (root by default) unless -q was given."""
    target = logging.getLogger(logger)
    if verbosity > QUIET and not target.isEnabledFor(logging.INFO):
        target.setLevel(logging.INFO)
