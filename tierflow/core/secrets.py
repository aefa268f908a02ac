"""Scrub secrets out of a text before it reaches a log, a job record or a page.

:func:`scrub` replaces, with ``***``:

- the value (8 characters or more) of every environment variable whose name ends in ``KEY``,
  ``TOKEN``, ``SECRET`` or ``PASSWORD``, and of every variable a configured model names as its
  key (``api_key_env``, whatever its name: :func:`remember_key_variable`, called by the config's
  validation);
- anything shaped like a key: ``sk-...``, ``Bearer ...``, ``api_key=...``, ``x-api-key: ...``;
- the password of a URL (``scheme://user:password@host`` keeps the user and host).

It never raises and reads nothing but the environment, so any floor may call it on any path.
"""

from __future__ import annotations

import os
import re

_KEY_PATTERNS = (
    (re.compile(r"sk-[A-Za-z0-9_\-]{8,}"), "sk-***"),
    (re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=\-]{8,}"), r"\1***"),
    (
        re.compile(r"(?i)((?:api[_-]?key|x-api-key|token)[\"']?\s*[:=]\s*[\"']?)[^\s\"',}]{8,}"),
        r"\1***",
    ),
    # scheme://user:password@host (the user may be empty: redis://:pw@host)
    (re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://[^\s/@:]*):[^\s/@]+@"), r"\1:***@"),
)
_SECRET_ENV = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD)$")
MIN_SECRET_LENGTH = 8  # shorter values are not replaced: they would blank ordinary words
_key_variables: set[str] = set()


def remember_key_variable(name: str) -> None:
    """Scrub the value of the environment variable ``name`` from now on in this process (a
    model's ``api_key_env``: its name need not look secret)."""
    _key_variables.add(name)


def key_variables() -> frozenset[str]:
    """The variables remembered by :func:`remember_key_variable`."""
    return frozenset(_key_variables)


def scrub(text: str) -> str:
    """``text`` without secrets (see the module's docstring)."""
    for name, value in os.environ.items():
        if len(value) >= MIN_SECRET_LENGTH and (
            name in _key_variables or _SECRET_ENV.search(name.upper())
        ):
            text = text.replace(value, "***")
    for pattern, replacement in _KEY_PATTERNS:
        text = pattern.sub(replacement, text)
    return text
