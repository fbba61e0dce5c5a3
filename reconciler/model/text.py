"""Text echoed back to a terminal: escaped, cut to a sane length, and without credentials. Pure.

Values in error messages come from plan files, templates and the cluster: a plan value with
``\\x1b]0;...`` would retitle the user's terminal (or hide the rest of the line), a template
that renders 100 MB would echo 100 MB. ``shown`` makes any value safe to print: control
characters (C0, DEL, C1), bidirectional overrides and line/paragraph separators become
visible escapes (``\\x1b``, ``\\n``, ``\\u202e``), and long text is cut, saying how much was.

URLs (``--git-repo``, ``--pushgateway``, and whatever git or an HTTP library says about them)
may carry credentials: ``redact_urls`` is the one redaction for every URL the program prints,
and ``split_userinfo`` takes the credentials out of a URL by the same rule, so what is never
printed is never passed on a command line either.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

MAX_SHOWN = 300
"""Characters of one echoed value."""
MAX_MESSAGE = 2000
"""Characters of one whole message (``Problem``, ``ClusterError``)."""

_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def shown(value: object, limit: int = MAX_SHOWN) -> str:
    """``value`` as printable text: escaped, and cut to ``limit`` characters (plus a note)."""
    if isinstance(value, bytes | bytearray):
        text = bytes(value[: limit * 4 + 4]).decode("utf-8", "replace")
        total = len(value)
    else:
        text = str(value)
        total = len(text)
    cut = text[:limit]
    escaped = _UNSAFE.sub(_escape, cut)
    if total > limit:
        more = total - limit
        unit = "bytes" if isinstance(value, bytes | bytearray) else "characters"
        escaped += f"... ({more:,} more {unit})"
    return escaped


def clean(message: str, limit: int = MAX_MESSAGE) -> str:
    """A whole message made safe to print (``shown`` with the message-sized limit)."""
    if len(message) <= limit and not _UNSAFE.search(message):
        return message
    return shown(message, limit)


# -- URLs: the one redaction for every URL we print ---------------------------------------------

REDACTED = "***"
"""What stands in for a URL's userinfo (``https://***@host``) and each of its query values."""

# A scheme starts a URL where a word starts: at the start, after whitespace, a quote, a bracket
# or a separator (``'https://...'``, ``url=https://...``); never inside a userinfo
# (``user:a://b@host`` is one URL, not two).
_SCHEME = re.compile(r"""(?<![^\s'"`(<\[{=,;|])[A-Za-z][A-Za-z0-9+.-]*://""")
_PARAMETER = re.compile(r"([?#&;])([^?#&;]*)")
_CLOSING = re.compile(r"""['"`>)\]}]*[.,:;!]?$""")


def redact_urls(text: str) -> str:
    """``text`` with the credentials of every ``scheme://`` URL in it replaced by ``***``. Pure.

    - **userinfo**, up to the *last* ``@`` of the URL: a password may hold ``@``, ``/``,
      ``:``, percent escapes, and (a malformed URL) spaces or tabs, so a URL runs to the end
      of its line or to the next URL, and ``https://user:p@ss word@host/r`` becomes
      ``https://***@host/r``. When in doubt more is removed: an ``@`` later on the same line
      (``https://host/r@v1``, an e-mail address after the URL) is taken as the end of a
      userinfo too.
    - **every query (and fragment) value**: ``?token=abc&ref=main`` becomes
      ``?token=***&ref=***`` (a bare ``?abc`` becomes ``?***``): ``access_token``,
      ``private_token``, ``sig``, ``X-Amz-Signature`` and whatever a server names its secret.

    ``scp``-like addresses (``git@host:org/repo``) carry no secret and are left as they are.
    """
    starts = [m.start() for m in _SCHEME.finditer(text)]
    if not starts:
        return text
    pieces = [text[: starts[0]]]
    for index, start in enumerate(starts):
        end = starts[index + 1] if index + 1 < len(starts) else len(text)
        pieces.append(_redact_one(text[start:end]))
    return "".join(pieces)


def _redact_one(chunk: str) -> str:
    """One URL (``scheme://...``) and whatever follows it up to the next URL."""
    head = chunk.index("://") + 3
    line_end = len(chunk)
    for newline in ("\n", "\r"):
        found = chunk.find(newline, head)
        if found != -1:
            line_end = min(line_end, found)
    at = chunk.rfind("@", head, line_end)
    if at != -1:
        chunk = f"{chunk[:head]}{REDACTED}@{chunk[at + 1 :]}"
        line_end -= at + 1 - head - len(REDACTED) - 1
        rest = head + len(REDACTED) + 1
    else:
        rest = head
    # The host and path end at whitespace: the query's values in there are redacted.
    stop = rest
    while stop < line_end and not chunk[stop].isspace():
        stop += 1
    address = chunk[rest:stop]
    cut = min((i for i in (address.find("?"), address.find("#")) if i != -1), default=-1)
    if cut != -1:
        # A value runs to the next separator; closing quotes and brackets (and one
        # punctuation mark) at its very end are the message's, not the URL's.
        query = address[cut:]
        closing = _CLOSING.search(query)
        tail = closing.group() if closing else ""
        query = query[: len(query) - len(tail)]
        address = address[:cut] + _PARAMETER.sub(_parameter, query) + tail
    return chunk[:rest] + address + chunk[stop:]


def _parameter(match: re.Match[str]) -> str:
    separator, parameter = match.groups()
    if not parameter:
        return separator
    name, equals, _value = parameter.partition("=")
    return f"{separator}{name}={REDACTED}" if equals else f"{separator}{REDACTED}"


def split_userinfo(url: str) -> tuple[str, str | None, str | None]:
    """(``url`` without its userinfo, the user name, the password), both percent-decoded;
    (``url``, None, None) without a userinfo, and the password None for ``user@`` alone. Pure.

    The userinfo is what ``redact_urls`` removes: everything between ``://`` and the *last*
    ``@`` (a password may hold ``@``, ``/``, ``?``): what is never printed is never passed on
    either. (A URL whose path holds an ``@``, ``https://host/repo@v1``, is read as a userinfo
    ``host/repo`` too: put such a URL's credentials in a file and percent-encode the ``@``.)
    """
    scheme = _SCHEME.match(url)
    at = url.rfind("@")
    if scheme is None or at < scheme.end():
        return url, None, None
    userinfo = url[scheme.end() : at]
    user, colon, password = userinfo.partition(":")
    public = url[: scheme.end()] + url[at + 1 :]
    return public, unquote(user), unquote(password) if colon else None


def parse_credentials(text: str) -> tuple[str | None, str]:
    """(user name or None, secret) from a credentials file's text: its first line,
    ``user:secret`` (split at the first ``:``) or a lone ``secret`` (a token). Surrounding
    whitespace and the line break are not part of them. Raises ``ValueError`` (a message
    that never quotes the text) when there is no secret, or a NUL is in it. Pure."""
    line = text.split("\n", 1)[0].strip()
    user, colon, secret = line.partition(":")
    if not colon:
        user, secret = "", line
    if not secret:
        raise ValueError("no secret on its first line (expected user:secret or a token)")
    if "\0" in line:
        raise ValueError("a NUL character on its first line")
    return user or None, secret
