"""What makes a SECRET_KEY strong enough to sign tokens outside local development.

A key is judged by the entropy its alphabet allows: each character of a key drawn at random from
an alphabet of N symbols carries log2(N) bits, so the shortest standard alphabet holding every
character of the key gives its strength. 256 bits are needed (HS256's key size): 64 hex digits
(`openssl rand -hex 32`), 52 base32 characters, 43 base64 or url-safe characters
(`secrets.token_urlsafe(32)`), 40 printable ASCII characters.

A count of distinct characters is no test of randomness: 64 random hex digits miss one of the 16
about a quarter of the time. Keys that are long enough but plainly not random are refused by two
cheaper tests with no false alarms on real random keys: a character distribution far from
uniform (the empirical entropy per character below 3/4 of what a random key of that length
shows), and a key that is one block repeated.
"""

from __future__ import annotations

import math
import string
from collections import Counter

REQUIRED_BITS = 256
PLACEHOLDER_MARKERS = ("change", "example", "secret", "placeholder", "dev-only", "xxxxxx")

_HEX = frozenset(string.hexdigits)
_BASE32 = frozenset(string.ascii_uppercase + "234567=")
_BASE64 = frozenset(string.ascii_letters + string.digits + "+/-_=")
_PRINTABLE = frozenset(string.ascii_letters + string.digits + string.punctuation)
# Smallest first: (alphabet, symbols it counts, how it is called in the error message).
_ALPHABETS = (
    (frozenset(string.digits), 10, "decimal"),
    (_HEX, 16, "hex"),
    (_BASE32, 32, "base32"),
    (_BASE64, 64, "base64"),
    (_PRINTABLE, len(_PRINTABLE), "printable ASCII"),
)
# Any other character (spaces, non-ASCII): no credit beyond the printable alphabet's.
_OTHER = (None, len(_PRINTABLE), "text")
GENERATE_HINT = "generate one with `openssl rand -hex 32`"


def _alphabet(key: str) -> tuple[int, str]:
    characters = set(key)
    for alphabet, symbols, name in _ALPHABETS:
        if characters <= alphabet:
            return symbols, name
    return _OTHER[1], _OTHER[2]


def _is_repeated_block(key: str) -> bool:
    # A string is a repetition of a shorter block exactly when it occurs inside itself doubled,
    # other than at the two ends.
    return len(key) > 1 and key in (key + key)[1:-1]


def _empirical_bits_per_character(key: str) -> float:
    counts = Counter(key)
    return -sum(n / len(key) * math.log2(n / len(key)) for n in counts.values())


def _without_padding(key: str) -> str:
    # Base32/base64 padding carries no entropy; in any other key "=" is a character like others.
    stripped = key.rstrip("=")
    return stripped if set(stripped) <= _BASE64 else key


def secret_key_problem(key: str) -> str | None:
    """Why this key must not sign tokens, or None when it is strong enough."""
    lowered = key.lower()
    if any(marker in lowered for marker in PLACEHOLDER_MARKERS):
        return f"SECRET_KEY looks like a placeholder: {GENERATE_HINT}"
    body = _without_padding(key)
    symbols, name = _alphabet(body)
    bits = len(body) * math.log2(symbols)
    if bits < REQUIRED_BITS:
        needed = math.ceil(REQUIRED_BITS / math.log2(symbols))
        return (
            f"SECRET_KEY is too short: {len(body)} {name} characters carry "
            f"{math.floor(bits)} bits, {REQUIRED_BITS} are needed ({needed} {name} characters); "
            f"{GENERATE_HINT}"
        )
    # A random key of this length over this alphabet shows about min(log2 N, log2 len) bits per
    # character; 3/4 of that is far below what any random key shows.
    expected = min(math.log2(symbols), math.log2(len(body)))
    if _is_repeated_block(body) or _empirical_bits_per_character(body) < 0.75 * expected:
        return f"SECRET_KEY is repetitive, not random: {GENERATE_HINT}"
    return None
