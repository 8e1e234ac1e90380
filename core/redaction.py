"""Sensitive columns (serving.sensitive_columns): the one hash rule, and error text without values.

The gateway's prediction log keeps a hashed column as HMAC-SHA256(serving.hash_salt, str(value))
in hex, and leaves a dropped column out. The data contract, the snapshot manifest, the skew gate,
monitoring and the shadow analysis must see a sensitive column as the log keeps it, so the rule
lives here, where the gateway and the training side both read it: the same setting (the
SHIPWAY_SERVING__HASH_SALT environment variable) keys both, and a contract records a fingerprint
of its key (`key_check`), so a contract hashed under another salt is told apart from drift.

`scrub` takes a request's values out of text the gateway logs (a model's exception quotes the
value it failed on: scikit-learn's "Found unknown categories ['...']"): quoted literals and
bracketed lists become `<value>`, and so does any sensitive value the request carried.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Collection, Iterable, Mapping
from typing import Any, Literal

HASH: Literal["hash"] = "hash"
DROP: Literal["drop"] = "drop"
HIDDEN = "<value>"
KEY_CHECK_MESSAGE = b"shipway: the key of serving.sensitive_columns hashes"
# Quoted text (either quote, escapes inside), then innermost bracketed lists, sets and mappings.
QUOTED = re.compile(r"""'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*\"""")
BRACKETED = re.compile(r"\[[^\[\]]*\]|\{[^{}]*\}")
MIN_SCRUBBED_CHARS = 3  # a shorter sensitive value ("1", "no") would blank out the message's own words


def hash_value(key: bytes, value: Any) -> str:
    """A logged value of a hashed column: HMAC-SHA256 of its text (the typed value's str())."""
    return hmac.new(key, str(value).encode(), hashlib.sha256).hexdigest()


def key_check(key: bytes) -> str:
    """A fingerprint of the hash key that does not reveal it: two sides agree on it iff they hash alike."""
    return hmac.new(key, KEY_CHECK_MESSAGE, hashlib.sha256).hexdigest()[:16]


def scrub(text: str, values: Iterable[Any] = ()) -> str:
    """`text` without the values it may quote: quoted literals and bracketed lists become <value>,
    and any of `values` (a request's sensitive values) that is long enough to be told from a word."""
    text = QUOTED.sub(HIDDEN, text)
    for _ in range(8):  # nested lists: innermost first
        text, found = BRACKETED.subn(HIDDEN, text)
        if not found:
            break
    words = sorted({str(v) for v in values if v is not None and len(str(v)) >= MIN_SCRUBBED_CHARS}, key=len)
    for word in reversed(words):  # longest first: a value that contains another goes whole
        text = text.replace(word, HIDDEN)
    return text


def model_error(exc: BaseException, sensitive: Collection[str], columns: Mapping[str, Any]) -> str:
    """A model's exception as the gateway logs it: its type and message, the message scrubbed when
    serving.sensitive_columns names columns (`columns`: the request's columns as sent)."""
    text = f"{type(exc).__name__}: {exc}"
    if not sensitive:
        return text
    return scrub(text, (v for name in sensitive for v in (columns.get(name) or ())))
