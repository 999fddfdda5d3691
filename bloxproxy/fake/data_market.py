"""Fixture data for the fake Roblox upstream: economy assets, catalog items and avatars.

Values copied from the catalog samples are marked *sample*; the rest are plausible fixture
values (*guess*).  Response dicts are in the exact (camelCase or PascalCase) shape Roblox sends.
"""

from __future__ import annotations

JsonObj = dict[str, object]

# economy.roblox.com/v2/assets/{assetId}/details (PascalCase, noblox ProductInfo shape)
_ASSET_TAIL: JsonObj = {
    "ContentRatingTypeId": 0,
    "SaleAvailabilityLocations": None,
    "SaleLocation": None,
    "CollectibleItemId": None,
    "CollectibleProductId": None,
    "CollectiblesItemDetails": None,
}


def _asset(aid: int, product: int, name: str, desc: str, type_id: int, **kw: object) -> JsonObj:
    creator = {
        "Id": 1,
        "Name": "Roblox",
        "CreatorType": "User",
        "CreatorTargetId": 1,
        "HasVerifiedBadge": True,
    }
    base: JsonObj = {
        "TargetId": aid,
        "ProductType": "User Product",
        "AssetId": aid,
        "ProductId": product,
        "Name": name,
        "Description": desc,
        "AssetTypeId": type_id,
        "Creator": creator,
        "IconImageAssetId": 0,
        "Created": "2008-06-20T21:23:41.293Z",
        "Updated": "2019-10-31T17:05:25.05Z",
        "PriceInRobux": None,
        "PriceInTickets": None,
        "Sales": 0,
        "IsNew": False,
        "IsForSale": False,
        "IsPublicDomain": False,
        "IsLimited": False,
        "IsLimitedUnique": False,
        "Remaining": None,
        "MinimumMembershipLevel": 0,
    }
    base.update(kw)
    base.update(_ASSET_TAIL)
    return base


ASSETS: dict[int, JsonObj] = {
    # guess: plausible values for the Valkyrie Helm (a Roblox-made limited hat)
    1365767: _asset(
        1365767,
        3342349,
        "Valkyrie Helm",
        "Forged in the fires of Asgard.",
        8,
        Sales=1224,
        IsLimited=True,
        PriceInRobux=None,
    ),
    # guess: plausible values for an id the lead asked for (in the catalog 3695523523 is the
    # Creator.Id of the asset-details sample, not an asset id)
    3695523523: _asset(
        3695523523,
        1156893242,
        "Camp Fire Hat",
        "A warm hat for cold nights.",
        8,
        Created="2019-08-07T18:31:09.99Z",
        Updated="2019-08-07T18:31:09.99Z",
        PriceInRobux=75,
        IsForSale=True,
        Sales=8812,
    ),
    # sample: verbatim third-party capture
    11348039741: {
        "TargetId": 11348039741,
        "ProductType": "User Product",
        "AssetId": 11348039741,
        "ProductId": 1328882251,
        "Name": "funny",
        "Description": "",
        "AssetTypeId": 10,
        "Creator": {
            "Id": 3695523523,
            "Name": "Seafaroo",
            "CreatorType": "Group",
            "CreatorTargetId": 15318441,
            "HasVerifiedBadge": False,
        },
        "IconImageAssetId": 0,
        "Created": "2022-10-22T16:06:30.943Z",
        "Updated": "2023-09-07T05:55:01.663Z",
        "PriceInRobux": None,
        "PriceInTickets": None,
        "Sales": 0,
        "IsNew": False,
        "IsForSale": False,
        "IsPublicDomain": False,
        "IsLimited": False,
        "IsLimitedUnique": False,
        "Remaining": None,
        "MinimumMembershipLevel": 0,
        **_ASSET_TAIL,
    },
}

_MAGMA = "He's got hot blood, with a temperature of nine hundred and three."
_ROBLOX_CREATOR: JsonObj = {
    "creatorHasVerifiedBadge": True,
    "creatorType": "User",
    "creatorTargetId": 1,
    "creatorName": "Roblox",
}
# catalog /v1/catalog/items/details keyed by (itemType 1=Asset 2=Bundle, id); samples verbatim
CATALOG_ITEMS: dict[tuple[int, int], JsonObj] = {
    (2, 429): {
        "id": 429, "itemType": "Bundle", "bundleType": 1, "name": "Magma Fiend",
        "description": _MAGMA, "productId": 7219806593957530, "itemStatus": [],
        "itemRestrictions": [], **_ROBLOX_CREATOR, "price": 300, "lowestPrice": 300,
        "lowestResalePrice": 0, "unitsAvailableForConsumption": 0, "purchaseCount": 0,
        "favoriteCount": 520324, "offSaleDeadline": None,
        "collectibleItemId": "e036077b-ed8d-4bf1-9193-4e64bbc86978", "totalQuantity": 0,
        "saleLocationType": "ShopAndAllExperiences", "hasResellers": False,
    },
    (1, 2608538559): {
        "id": 2608538559, "itemType": "Asset", "assetType": 31,
        "name": "Magma Fiend - Right Leg", "description": _MAGMA, "productId": 427839098,
        "itemStatus": [], "itemRestrictions": [], **_ROBLOX_CREATOR,
        "priceStatus": "Off Sale", "purchaseCount": 0, "favoriteCount": 9887,
        "offSaleDeadline": None, "saleLocationType": "NotApplicable", "isOffSale": True,
    },
}  # fmt: skip

# avatar.roblox.com/v1/users/{userId}/avatar - official schema with plausible values (guess);
# every existing user wears the same default R15 avatar.
AVATAR: JsonObj = {
    "scales": {
        "height": 1.0,
        "width": 1.0,
        "head": 1.0,
        "depth": 1.0,
        "proportion": 0.0,
        "bodyType": 0.0,
    },
    "playerAvatarType": "R15",
    "bodyColors": {
        "headColorId": 1001,
        "torsoColorId": 1001,
        "rightArmColorId": 1001,
        "leftArmColorId": 1001,
        "rightLegColorId": 1001,
        "leftLegColorId": 1001,
    },
    "assets": [],
    "defaultShirtApplied": True,
    "defaultPantsApplied": True,
    "emotes": [],
}
