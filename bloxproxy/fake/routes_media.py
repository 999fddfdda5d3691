"""Fake avatar, economy and catalog endpoints (thumbnails: :mod:`.routes_thumbnails`)."""

from __future__ import annotations

import orjson

from .common import BAD_REQUEST, Ctx, JsonObj, Reply, Route, error, json_body, ok
from .data import user_exists
from .data_market import ASSETS, AVATAR, CATALOG_ITEMS

AVATAR_USER_INVALID = error(400, 1, "The specified user does not exist.")
# guess: the catalog has no documented error for unknown assets; this code/message is ours
ASSET_INVALID = error(400, 0, "Asset is invalid or does not exist", False)
CATALOG_BAD_COUNT = error(400, 2, "Invalid count")
CATALOG_FLOOD = error(429, 8, "The flood limit has been exceeded.", False)
MAX_CATALOG_ITEMS = 120  # guess: the catalog says "an item count limit" without a number

_AVATAR_BYTES = orjson.dumps(AVATAR)


def avatar(ctx: Ctx) -> Reply:
    """GET avatar /v1/users/{userId}/avatar (same default R15 avatar for everyone)."""
    if not user_exists(ctx.params["userId"]):
        return AVATAR_USER_INVALID
    return Reply(200, _AVATAR_BYTES)


def asset_details(ctx: Ctx) -> Reply:
    """GET economy /v2/assets/{assetId}/details (PascalCase ProductInfo)."""
    asset = ASSETS.get(ctx.params["assetId"])
    return ASSET_INVALID if asset is None else ok(asset)


def catalog_details(ctx: Ctx) -> Reply:
    """POST catalog /v1/catalog/items/details ``{"items":[{"itemType":1|2,"id":N}]}``
    (CSRF always required; unknown items omitted)."""
    body = json_body(ctx)
    items = None if body is None else body.get("items")
    if not isinstance(items, list):
        return BAD_REQUEST
    if not items or len(items) > MAX_CATALOG_ITEMS:
        return CATALOG_BAD_COUNT
    data: list[JsonObj] = []
    for item in items:
        if not isinstance(item, dict):
            return BAD_REQUEST
        kind, iid = item.get("itemType"), item.get("id")
        if not (isinstance(kind, int) and isinstance(iid, int)) or kind not in (1, 2):
            return BAD_REQUEST
        if isinstance(kind, bool) or isinstance(iid, bool):
            return BAD_REQUEST
        found = CATALOG_ITEMS.get((kind, iid))
        if found is not None:
            data.append(found)
    return ok({"data": data})


ROUTES = [
    Route("avatar", "GET", "/v1/users/{userId}/avatar", avatar),
    Route("economy", "GET", "/v2/assets/{assetId}/details", asset_details),
    Route(
        "catalog",
        "POST",
        "/v1/catalog/items/details",
        catalog_details,
        csrf="always",
        too_many=CATALOG_FLOOD,
    ),
]
