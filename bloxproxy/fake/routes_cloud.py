"""Fake Open Cloud endpoints (``apis.roblox.com/cloud/v2/...``).

Open Cloud wants an API key (``x-api-key``) or an OAuth bearer token; any non-empty one is
accepted here, a missing one is 401 with the gateway's legacy-shaped error
``{"errors":[{"code":0,"message":"Invalid API Key"}]}`` (Roblox creator docs,
``cloud/reference/errors.md``).  Its own errors are ``{"code": "NOT_FOUND", "message": ...}``
(the v2 shape, same page).  Resources (official OpenAPI schemas ``User`` and ``Group``; the
values are the fake's users and groups): ``GET /cloud/v2/users/{userId}`` and
``GET /cloud/v2/groups/{groupId}``.

Every answer on a ``/cloud/`` path carries the ``x-ratelimit-*`` headers when the fake's
per-client-IP limit is on (see :mod:`bloxproxy.fake.limits`); the legacy hosts never do.
"""

from __future__ import annotations

import orjson

from .common import Ctx, Reply, Route, ok
from .data import find_group, find_user

CLOUD_UNAUTHORIZED = Reply(
    401, orjson.dumps({"errors": [{"code": 0, "message": "Invalid API Key"}]})
)
CLOUD_RATE_LIMITED = Reply(
    429, orjson.dumps({"code": "RESOURCE_EXHAUSTED", "message": "Too many requests."})
)


def _not_found(what: str) -> Reply:
    return Reply(404, orjson.dumps({"code": "NOT_FOUND", "message": f"{what} not found."}))


USER_NOT_FOUND = _not_found("User")
GROUP_NOT_FOUND = _not_found("Group")


def user(ctx: Ctx) -> Reply:
    """GET apis /cloud/v2/users/{userId} (public fields only: no scopes are checked)."""
    if ctx.api_key is None:
        return CLOUD_UNAUTHORIZED
    found = find_user(ctx.params["userId"])
    if found is None:
        return USER_NOT_FOUND
    return ok(
        {
            "path": f"users/{found.id}",
            "createTime": found.created,
            "id": str(found.id),
            "name": found.name,
            "displayName": found.display_name,
            "about": found.description,
            "locale": "en-us",
            "premium": False,
        }
    )


def group(ctx: Ctx) -> Reply:
    """GET apis /cloud/v2/groups/{groupId}."""
    if ctx.api_key is None:
        return CLOUD_UNAUTHORIZED
    found = find_group(ctx.params["groupId"])
    if found is None:
        return GROUP_NOT_FOUND
    return ok(
        {
            "path": f"groups/{found.id}",
            "createTime": found.created,
            "updateTime": found.created,
            "id": str(found.id),
            "displayName": found.name,
            "description": found.description,
            "owner": None if found.owner_id is None else f"users/{found.owner_id}",
            "memberCount": len(found.members),
            "publicEntryAllowed": found.public_entry,
            "locked": False,
            "verified": False,
        }
    )


ROUTES = [
    Route("apis", "GET", "/cloud/v2/users/{userId}", user, too_many=CLOUD_RATE_LIMITED),
    Route("apis", "GET", "/cloud/v2/groups/{groupId}", group, too_many=CLOUD_RATE_LIMITED),
]
