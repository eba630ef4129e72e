"""Who is annotating: server-signed anonymous ids, Hugging Face logins, and display names.

- An anonymous annotator gets a token ``anon-<12 hex>.<signature>`` from :meth:`Identity.issue`; the signature
  is HMAC-SHA256 over the id with a secret that lives in the data folder and never leaves the server. Only a
  token with a valid signature acts as ``anon-<12 hex>``: the bare id (e.g. read off a screen) or a forged
  signature is refused.
- A Hugging Face login is the strong identity, ``hf:<username>``; it comes from the OAuth profile the server
  received, never from text a client typed.
- Anything else a person types is a display name: it may not claim the ``anon-`` or ``hf:`` namespaces or a
  reserved name (``poclip-gold``, ...), and may not contain control or bidirectional-override characters (a
  right-to-left override makes ``evil\u202eknab`` display as another name).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import unicodedata
from pathlib import Path

from poclip.errors import UserError

ANON_PREFIX = "anon-"
HF_PREFIX = "hf:"
RESERVED = frozenset({"poclip-gold", "poclip-synthetic", "poclip", "admin", "administrator", "root", "system",
                      "gold", "maintainer", "anonymous"})
NAME_MAX = 40
# Directional overrides, embeddings and isolates (Unicode bidi algorithm, UAX #9): they reorder how the
# surrounding text is shown (``evil\u202eknab`` displays as another name), so a name holding one is refused.
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# Characters that draw nothing and are dropped from a name (Unicode "Default_Ignorable_Code_Point" members
# that are not in category Cf, which is dropped whole): combining grapheme joiner, Hangul fillers, Mongolian
# and generic variation selectors.
INVISIBLE = frozenset("\u034f\u115f\u1160\u3164\uffa0\u180b\u180c\u180d\u180e\u180f") | frozenset(
    chr(c) for c in range(0xFE00, 0xFE10)
)
# Confusable skeleton: letters of other scripts (and dashes, digits) that are drawn like a Latin letter, mapped
# to it. A small subset of the Unicode confusables table (UTS #39, confusables.txt) covering the Cyrillic and
# Greek letters that look like Latin ones; applied after NFKC (which already folds full-width and other
# compatibility forms) and before casefolding.
CONFUSABLES = str.maketrans({
    # Cyrillic
    "а": "a", "в": "b", "е": "e", "ё": "e", "һ": "h", "і": "i", "ї": "i", "ј": "j", "к": "k", "ӏ": "l",
    "м": "m", "н": "h", "о": "o", "р": "p", "с": "c", "ԛ": "q", "ѕ": "s", "т": "t", "у": "y", "ԝ": "w",
    "х": "x", "ԁ": "d", "ɡ": "g", "ү": "y", "А": "A", "В": "B", "Е": "E", "Ѕ": "S", "І": "I", "Ј": "J",
    "К": "K", "М": "M", "Н": "H", "О": "O", "Р": "P", "С": "C", "Т": "T", "Х": "X", "У": "Y", "Ү": "Y",
    "Ԛ": "Q", "Ԝ": "W", "Ӏ": "l",
    # Greek
    "α": "a", "ε": "e", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p", "τ": "t", "υ": "u", "χ": "x",
    "Α": "A", "Β": "B", "Ε": "E", "Ζ": "Z", "Η": "H", "Ι": "I", "Κ": "K", "Μ": "M", "Ν": "N", "Ο": "O",
    "Ρ": "P", "Τ": "T", "Υ": "Y", "Χ": "X",
    # Latin look-alikes and dashes
    "ı": "i", "ȷ": "j", "0": "o", "1": "l", "|": "l",
    "\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-", "\u2014": "-", "\u2015": "-", "\u2212": "-",
    "_": "-",
})
SECRET_FILE = "server-secret.key"


class IdentityError(UserError):
    """An identity or name that may not be used; the message says why."""


def server_secret(data_dir: Path) -> bytes:
    """The deployment's secret (32 random bytes in ``data_dir/server-secret.key``, mode 0600), created on first
    use. Keep the data folder private: whoever reads this file can sign ids."""
    path = Path(data_dir) / SECRET_FILE
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(32))
    try:
        os.link(tmp, path)  # atomic, and fails if another process created it first: then use theirs
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return bytes.fromhex(path.read_text().strip())


def clean_name(name: str) -> str:
    """A typed name as it is stored and shown: NFKC (full-width ``ａｄｍｉｎ`` becomes ``admin``), invisible and
    format characters removed (zero-width space and joiners, soft hyphen, bidi marks; category Cf and
    :data:`INVISIBLE`), runs of white space made one space, ends stripped. Directional overrides are kept
    here so that :func:`check_display_name` can refuse them by name."""
    name = unicodedata.normalize("NFKC", name)
    name = "".join(c for c in name if c in BIDI_CONTROLS
                   or not (c in INVISIBLE or unicodedata.category(c) == "Cf"))
    return re.sub(" {2,}", " ", name).strip()  # NFKC has made every other space character U+0020


def name_key(name: str) -> str:
    """The skeleton two names are compared by: ``casefold(confusables(clean_name(name)))``, where
    confusables maps look-alike letters of other scripts to Latin (:data:`CONFUSABLES`), applied again after
    casefolding (which makes new lower-case letters). ``poclіp-gold`` (Cyrillic і), ``POCLIP-GOLD`` and
    ``poclip-gold`` plus a zero-width space all have the key ``poclip-gold``, as the reserved name does."""
    return clean_name(name).translate(CONFUSABLES).casefold().translate(CONFUSABLES)


RESERVED_KEYS = frozenset(name_key(reserved) for reserved in RESERVED)


def check_display_name(name: str) -> str:
    """A typed name, cleaned (:func:`clean_name`); refused (IdentityError) when it is blank once cleaned, too
    long, has control or bidi override characters, or when its skeleton (:func:`name_key`) claims the
    ``anon-``/``hf:`` namespaces or a reserved name.

    Returns:
        The cleaned name, as it is stored and shown.
    """
    if not isinstance(name, str):
        raise IdentityError("the name must be text")
    typed = bool(name.strip())
    name = clean_name(name)
    if not name:
        raise IdentityError("enter a name, or annotate anonymously" if not typed else
                            "the name is blank once invisible characters are removed: type a visible name")
    if len(name) > NAME_MAX:
        raise IdentityError(f"the name is too long: at most {NAME_MAX} characters")
    bad = [c for c in name if c in BIDI_CONTROLS or unicodedata.category(c) in ("Cc", "Cs", "Co", "Cn")]
    if bad:
        codes = ", ".join(f"U+{ord(c):04X}" for c in bad)
        raise IdentityError(f"the name contains invisible control characters ({codes})")
    key = name_key(name)
    if key.startswith(HF_PREFIX):
        raise IdentityError("names starting with 'hf:' belong to Hugging Face logins: use the login button")
    if key.startswith(ANON_PREFIX):
        raise IdentityError("names starting with 'anon-' are anonymous ids issued by the server")
    if key in RESERVED_KEYS:
        raise IdentityError(f"{name!r} is a reserved name (or looks like one)")
    return name


class Identity:
    """Issues and checks anonymous annotator tokens; resolves who is acting."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the identity secret must be at least 16 bytes")
        self._secret = secret

    def _sign(self, handle: str) -> str:
        return hmac.new(self._secret, b"poclip-anon\0" + handle.encode(), hashlib.sha256).hexdigest()[:32]

    def issue(self) -> str:
        """A new anonymous annotator token, ``anon-<12 hex>.<signature>`` (keep it in the browser only)."""
        return self.token_for(ANON_PREFIX + secrets.token_hex(6))

    def token_for(self, handle: str) -> str:
        """``handle`` signed by this server, e.g. ``hf:<user>`` from the server's own OAuth session, so the
        request path can carry one string that nobody without the secret can make."""
        return f"{handle}.{self._sign(handle)}"

    def verify(self, token: str) -> str:
        """The annotator handle a token stands for; IdentityError when it is not a token this server signed."""
        handle, dot, signature = (token or "").rpartition(".")
        if not dot or not handle.startswith((ANON_PREFIX, HF_PREFIX)) or not hmac.compare_digest(
            signature.encode(), self._sign(handle).encode()
        ):
            raise IdentityError("this anonymous id was not issued by this server; reload the page for a new one")
        return handle

    def resolve(self, annotator: str, hf_username: str | None = None) -> str:
        """Who acts: ``hf:<username>`` for a logged-in user (from the server's OAuth profile), the handle of a
        valid anonymous token, or a checked display name. Bare or forged ``anon-`` ids and typed ``hf:`` or
        reserved names are refused."""
        if hf_username:
            return HF_PREFIX + hf_username
        annotator = (annotator or "").strip()
        folded = annotator.casefold()
        if folded.startswith(ANON_PREFIX) or (folded.startswith(HF_PREFIX) and "." in annotator):
            return self.verify(annotator)
        return check_display_name(annotator)
