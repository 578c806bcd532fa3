"""Signed content URLs: a link to one stored output that works without the bearer key, for a while.

Why: with ``RAY_DIT_API_KEY`` set, a ``url`` response that points at this server's own
``/content`` route (S3 off, or the upload not landed yet) would answer 401 to whatever the client
hands it to: a browser, an ``<img>`` tag, ``curl -O``. None of those can send a bearer key. S3's
presigned URLs solve the same problem, and these work the same way: the URL carries an expiry
and an HMAC-SHA256 over what it names (the output id, its index, the object key if any, the
expiry), made with a secret only the servers know. Changing any part of the URL breaks the
signature; keeping it past its expiry gets a refusal. Both are 403 (the request names a resource
it may not have), never 401: there is no key the client could add to that URL.

The secret is ``RAY_DIT_URL_SIGNING_KEY`` when set, else derived from ``RAY_DIT_API_KEY``
(HMAC of the API key with a fixed label). Every ingress replica reads the same environment, so
every replica signs and checks alike with no new configuration, and the API key itself never
signs anything (a signature reveals nothing about it). Rotating the API key also invalidates
every URL handed out under the old one. Expiry is wall-clock (unix seconds), like S3's: replicas
on other nodes check it, and only durations, not clock readings, can be compared across
processes any other way.

The secret lives only in :class:`UrlSigner`'s private attribute: never in its repr, in a log
line, in a URL or in an error message. Signatures are compared with ``hmac.compare_digest``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

from ray_dit.config import ServerSettings

#: The label the default secret is derived under: HMAC(key=RAY_DIT_API_KEY, msg=LABEL).
LABEL = b"ray_dit/content-url-signing-key/v1"
#: Query parameters a signed URL adds: the expiry (unix seconds) and the signature (hex).
EXPIRES, SIGNATURE = "expires", "signature"
IMAGE_ID_RE = re.compile(r"^(?P<rid>img_[0-9a-f]{8,64})_(?P<index>[0-9]{1,4})$")
_UNIX_TIME_RE = re.compile(r"^[0-9]{1,12}$")


class SignatureRefused(Exception):
    """A signed URL that must not be served: ``code`` is ``invalid_signature`` or ``url_expired``,
    the message says what was wrong (and never contains the secret or the expected signature)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return self.message


def image_output(image_id: str) -> tuple[str, int] | None:
    """``img_<hex>_<index>`` (the id in ``/v1/images/{id}/content``) -> (request id, index)."""
    match = IMAGE_ID_RE.match(image_id)
    return (match["rid"], int(match["index"])) if match else None


def derive_secret(settings: ServerSettings) -> bytes | None:
    """The signing secret: ``RAY_DIT_URL_SIGNING_KEY``, else HMAC(``RAY_DIT_API_KEY``, LABEL).
    None when auth is off: the content routes are open then, and URLs stay unsigned."""
    if not settings.auth_enabled or settings.api_key is None:
        return None
    if settings.url_signing_key is not None:
        return settings.url_signing_key.get_secret_value().encode()
    return hmac.new(settings.api_key.get_secret_value().encode(), LABEL, hashlib.sha256).digest()


class UrlSigner:
    """Signs and checks the query of a content URL. ``clock`` returns unix seconds (tests pass
    their own)."""

    def __init__(self, secret: bytes, ttl_s: int, clock: Callable[[], float] = time.time) -> None:
        if not secret:
            raise ValueError("a URL signer needs a non-empty secret")
        self._secret = secret
        self.ttl_s = int(ttl_s)
        self._clock = clock

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> UrlSigner | None:
        secret = derive_secret(settings)
        return None if secret is None else cls(secret, settings.content_url_ttl_s)

    def __repr__(self) -> str:
        return f"UrlSigner(ttl_s={self.ttl_s})"  # never the secret

    def _mac(self, output_id: str, index: int, key: str | None, expires: int) -> str:
        # JSON of the fields: unambiguous whatever characters a (tampered) key holds.
        message = json.dumps(["v1", output_id, index, key, expires], separators=(",", ":"))
        return hmac.new(self._secret, message.encode(), hashlib.sha256).hexdigest()

    def sign(self, output_id: str, index: int, key: str | None = None) -> dict[str, str]:
        """The query parameters that make a URL for this output valid for ``ttl_s`` seconds (up
        to one more: the expiry is a whole second, rounded up)."""
        expires = math.ceil(self._clock()) + self.ttl_s
        return {EXPIRES: str(expires), SIGNATURE: self._mac(output_id, index, key, expires)}

    def verify(self, output_id: str, index: int, query: Mapping[str, Any]) -> None:
        """Raise :class:`SignatureRefused` unless ``query`` (with its ``key``, if any) carries a
        valid, unexpired signature for this output. The signature is checked before the expiry,
        so a URL whose expiry was moved is ``invalid_signature``, not ``url_expired``."""
        raw_expires, given = query.get(EXPIRES), query.get(SIGNATURE)
        if raw_expires is None or given is None:
            raise SignatureRefused(
                "invalid_signature",
                f"a signed URL needs both '{EXPIRES}' and '{SIGNATURE}'; "
                "or send 'Authorization: Bearer <key>' instead",
            )
        if not _UNIX_TIME_RE.match(str(raw_expires)):
            raise SignatureRefused("invalid_signature", f"{EXPIRES}: must be a unix time in seconds")
        expires = int(raw_expires)
        expected = self._mac(output_id, index, query.get("key"), expires).encode()
        if not hmac.compare_digest(expected, str(given).encode("utf-8", "replace")):
            raise SignatureRefused(
                "invalid_signature",
                "the URL's signature does not match it: use the URL exactly as the server gave it "
                "(its id, index, key, expiry and signature), or send 'Authorization: Bearer <key>'",
            )
        if self._clock() > expires:
            raise SignatureRefused(
                "url_expired",
                f"this URL expired at unix time {expires} (signed URLs last "
                f"RAY_DIT_CONTENT_URL_TTL_S={self.ttl_s} s): ask for the output again, or send "
                "'Authorization: Bearer <key>'",
            )
