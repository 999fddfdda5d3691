"""``opencloud.keys``: Open Cloud API keys the proxy holds for its clients.

An operator gives each key a name, the key itself (``key: ${VAR}`` from the environment, or
``key_file:`` a file holding it, e.g. a mounted secret), its **owner** (``user:<id>`` or
``group:<id>``: Roblox counts an API key's requests against its owner, all keys of one
owner sharing one limit; docs/ROBLOX.md, "Open Cloud"). A named access key
(``auth.clients``) says which held key it may use (``opencloud_key: <name>``). A request of
such a client to an Open Cloud route
(``backend.credentials: api_key``) that carries no ``x-api-key`` of its own is sent with the
held key: game servers and bots call Open Cloud through the proxy without holding the key.

With ``opencloud_passthrough`` (opt-in, per client), the held key goes on passthrough
too: :func:`passthrough_use` decides, for a request of such a client, whether it is sent as
it is, with the held key, or refused — only the Open Cloud host (the ``apis`` service,
``apis.roblox.com``) and only its ``/cloud/`` and ``/legacy-…/`` paths, never over a
credential of the client's own, only for the methods the client's entry allows.

A held key is a secret: never in a repr, a log line, a metric or a problem (problems name
the key's *name*); the cache keys its answers by an HMAC of it, as for any credential.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from . import schema
from .errors import Problem, Where
from .keyconfig import _marked, named_entries
from .yamlsrc import MarkedDict

__all__ = [
    "HELD_KEY",
    "OPEN_CLOUD_SERVICE",
    "HeldKey",
    "PassUse",
    "owner_label",
    "passthrough_use",
    "read_held_keys",
]

_OWNER_RE = re.compile(r"^(user|group):([1-9][0-9]{0,18})$")
_MAX_KEY = 4096  # far above any API key; a file bigger than this is not one


@dataclass(frozen=True, slots=True)
class HeldKey:
    """One entry of ``opencloud.keys``."""

    name: str
    key: str = field(repr=False)  # the secret: never in a repr, a log line or an error
    owner: str = ""  # "user:1" or "group:7"

    @property
    def owner_label(self) -> str:
        """The owner as a scope suffix: ``group-7``."""
        return owner_label(self.owner)


def owner_label(owner: str) -> str:
    """``group:7`` as it names a limiter scope: ``group-7``."""
    return owner.replace(":", "-")


def _secret(value: object) -> str:
    # Never quote the value: it is a secret.
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected the API key as a non-empty string (use ${VAR})")
    value = value.strip()
    if len(value) > _MAX_KEY or any(c in value for c in "\r\n\x00"):
        raise ValueError("expected an API key (one line, at most 4096 characters)")
    return value


def _owner(value: object) -> str:
    if not isinstance(value, str) or not _OWNER_RE.match(value):
        raise ValueError(
            f"expected the key's owner as user:<id> or group:<id>, got {schema.show(value)}"
        )
    return value


HELD_KEY = schema.Block(
    "opencloud.keys.<name>",
    (
        schema.Key(
            "key",
            "The Open Cloud API key. Write it as `${VAR}` (from the environment); it is "
            "never logged, shown or counted in metrics. Or `key_file`.",
            _secret,
            shown="one of `key`, `key_file`",
        ),
        schema.Key(
            "key_file",
            "A file holding the key (a mounted secret; surrounding whitespace ignored), read "
            "when the config is loaded.",
            schema.string,
            shown="one of `key`, `key_file`",
        ),
        schema.Key(
            "owner",
            "Who the key belongs to, `user:<id>` or `group:<id>`: Roblox counts a key's "
            "requests against its owner, every key of one owner sharing one limit, and so "
            "does the proxy's learned budget (one scope per route and owner).",
            _owner,
            required="required: the key's owner, user:<id> or group:<id>",
        ),
    ),
)


def _read_file(path: str) -> str:
    try:
        with Path(path).open("rb") as f:
            raw = f.read(_MAX_KEY + 1)
    except OSError as exc:
        raise ValueError(f"cannot read the key file {path!r}: {exc.strerror or exc}") from None
    try:
        return _secret(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"the key file {path!r} is not UTF-8 text") from None
    except ValueError:
        raise ValueError(
            f"the key file {path!r} holds no API key (empty, or not one line)"
        ) from None


def read_held_keys(
    value: object, where: Where, problems: list[Problem], context: str
) -> tuple[HeldKey, ...]:
    """The ``opencloud.keys`` map as :class:`HeldKey`\\ s; every problem recorded as
    ``file:line: opencloud.keys.<name>.<key>: why``, never quoting a key."""
    data = _marked(value, where)
    if not isinstance(data, MarkedDict):
        problems.append(
            Problem(where, f"{context}: expected a mapping of key names, got {schema.show(value)}")
        )
        return ()
    held: list[HeldKey] = []
    for name, ctx, entry in named_entries(data, context, "key", problems):
        before = len(problems)
        values = HELD_KEY.read(entry, problems, ctx)
        if len(problems) > before:
            continue
        if ("key" in entry) == ("key_file" in entry):
            problems.append(Problem(entry.where, f"{ctx}: give exactly one of key and key_file"))
            continue
        secret = values["key"]
        if "key_file" in entry:
            try:
                secret = _read_file(values["key_file"])
            except ValueError as exc:
                problems.append(Problem(entry.at("key_file"), f"{ctx}.key_file: {exc}"))
                continue
        held.append(HeldKey(name, secret, values["owner"]))
    return tuple(held)


def check_clients(
    held: Collection[str], clients: Iterable[tuple[str, str]], where: Where, problems: list[Problem]
) -> None:
    """Every ``opencloud_key`` a named client gives (``clients``: its name and that key's
    name) must be a held key (``held``: their names)."""
    for client, key in clients:
        if key and key not in held:
            problems.append(
                Problem(
                    where,
                    f"auth.clients.{client}.opencloud_key: {key} is not in opencloud.keys",
                )
            )


# The passthrough service that is Open Cloud's host (apis.roblox.com), and its paths that
# take an API key: /cloud/v1|v2/… and the legacy-* API-key routes (/legacy-groups/v1/…, …).
OPEN_CLOUD_SERVICE = "apis"
_OPEN_CLOUD_PATH = re.compile(r"^/(?:cloud|legacy-[A-Za-z0-9-]+)/")


class PassUse(enum.Enum):
    """What a passthrough request of a client with ``opencloud_passthrough`` becomes."""

    AS_IS = "as_is"  # sent as the client sent it (not Open Cloud, or its own credential)
    HELD = "held"  # sent with the held key, without the client's cookies
    REFUSED = "refused"  # an Open Cloud call with a method the client may not send it with


def passthrough_use(
    methods: Collection[str], service: str, path: str, method: str, own_credential: bool
) -> PassUse:
    """The held key on passthrough: for ``methods`` (the client's allow-list; empty: not
    opted in) and a request of ``method`` to ``service`` at the canonical ``path``, which
    carries an ``x-api-key`` or ``Authorization`` of its own when ``own_credential``."""
    if not methods or service != OPEN_CLOUD_SERVICE or not _OPEN_CLOUD_PATH.match(path):
        return PassUse.AS_IS
    if own_credential:
        return PassUse.AS_IS  # the client's own key (or OAuth token) wins
    return PassUse.HELD if method in methods else PassUse.REFUSED
