"""One scrubber for secrets: API keys from the environment and passwords in URLs never reach a file, the terminal
or a log line.

Secrets live in the environment (the key variable named by ``teacher.api_key_env`` or eval's ``--api-key-env``,
well-known tokens such as ``HF_TOKEN``) or in a URL's userinfo (``http://user:key@host/v1``). A server may echo
either back (an error body repeating the ``Authorization`` header), so every string that leaves the process
passes through a :class:`Scrubber` at the edge that writes it. Ground floor: imports nothing from the package
except errors.py, so every layer can use it.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

MASK = "***"

MIN_SECRET_LENGTH = 4
"""Shorter values are not masked: they would blank ordinary words of a message, and no real key is that short."""

KNOWN_SECRET_VARIABLES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "OPENAI_API_KEY", "WANDB_API_KEY")
"""Variables that hold a secret whatever the config says; their values are always masked."""

_USERINFO = re.compile(r"(?<=://)[^/\s?#]+@")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with each secret value replaced by ``***`` (longest first, so a secret that contains another is
    masked whole). Values shorter than :data:`MIN_SECRET_LENGTH` are left alone."""
    for secret in sorted({s for s in secrets if s and len(s) >= MIN_SECRET_LENGTH}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def strip_userinfo(text: str) -> str:
    """Every URL in ``text`` with its ``user:pass@`` replaced by ``***@`` (the host and path stay readable)."""
    return _USERINFO.sub(MASK + "@", text)


def is_env_var_name(name: str) -> bool:
    """Whether ``name`` can be an environment variable's name; a pasted key (``sk-...``) cannot, so it is refused
    before it is ever printed."""
    return bool(_ENV_NAME.match(name))


def userinfo_secrets(url: str | None) -> list[str]:
    """What a URL's userinfo reveals: the whole ``user:pass``, the password (raw and percent-decoded), the user when
    there is no password (a token as user name), and the Basic-auth form a server could echo back."""
    if not url or "@" not in url:
        return []
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return []
    info = parts.netloc.rpartition("@")[0]
    if not info:
        return []
    user, _, password = info.partition(":")
    plain = f"{unquote(user)}:{unquote(password)}"
    out = [info, unquote(info), base64.b64encode(plain.encode()).decode()]
    out += [password, unquote(password)] if password else [user, unquote(user)]
    return out


def scrub_tree(obj: Any, clean) -> Any:
    """A copy of a JSON-like tree (dicts, lists, tuples) with ``clean`` applied to every string in it, keys too."""
    if isinstance(obj, str):
        return clean(obj)
    if isinstance(obj, Mapping):
        return {scrub_tree(k, clean): scrub_tree(v, clean) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(scrub_tree(v, clean) for v in obj)
    return obj


class Scrubber:
    """Knows the secret values of this process and masks them (and any URL userinfo) in text: ``scrubber(text)``.

    It learns more as settings become known (:meth:`learn`), since the key variable's name is only known once the
    config is read; a name that is not a variable name is taken for a pasted key and masked itself.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets: set[str] = {s for s in secrets if s}

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Scrubber:
        """A scrubber for the well-known secret variables (:data:`KNOWN_SECRET_VARIABLES`)."""
        scrubber = cls()
        scrubber.learn(key_envs=KNOWN_SECRET_VARIABLES, environ=environ)
        return scrubber

    def learn(self, *, key_envs: Iterable[str | None] = (), urls: Iterable[str | None] = (),
              environ: Mapping[str, str] | None = None) -> Scrubber:
        """Add the values of the named key variables and the userinfo of the URLs; returns self."""
        env = os.environ if environ is None else environ
        for name in key_envs:
            if not name:
                continue
            if not is_env_var_name(name):
                self.secrets.add(name)  # a key pasted where a variable name belongs
            elif env.get(name):
                self.secrets.add(env[name])
        for url in urls:
            self.secrets.update(userinfo_secrets(url))
        return self

    def __call__(self, text: str) -> str:
        return strip_userinfo(scrub(text, self.secrets))

    def __repr__(self) -> str:  # never show what it knows
        return f"Scrubber({len(self.secrets)} secret(s))"


@contextlib.contextmanager
def scrubbed_logs(scrubber: Scrubber) -> Iterator[None]:
    """Every log record created inside has its message scrubbed (formatted once, then masked), whichever handler
    prints it; the previous record factory is restored afterwards (the CLI's ``main`` is also called in-process)."""
    previous = logging.getLogRecordFactory()

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        with contextlib.suppress(Exception):  # a message that cannot be formatted is the logging module's to report
            record.msg, record.args = scrubber(record.getMessage()), ()
        return record

    logging.setLogRecordFactory(factory)
    try:
        yield
    finally:
        logging.setLogRecordFactory(previous)
