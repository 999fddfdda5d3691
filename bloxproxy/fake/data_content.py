"""Fixture data for the fake Roblox upstream: games, places, universes, game passes, badges.

Values copied from the catalog samples are marked *sample*; the rest are plausible fixture
values (*guess*).  Response dicts are in the exact (camelCase or PascalCase) shape Roblox sends.

Synthetic universes, computed on demand: every id in
``SYNTHETIC_UNIVERSE_MIN..SYNTHETIC_UNIVERSE_MAX`` (10,000,000 - 19,999,999) is a public game
``Game<id>`` made by a synthetic user, whose root place is ``id + SYNTHETIC_PLACE_OFFSET``;
it has votes, an icon and a develop record, no game passes and no badges.
"""

from __future__ import annotations

from .data import SYNTHETIC_MAX, SYNTHETIC_MIN

JsonObj = dict[str, object]
SYNTHETIC_UNIVERSE_MIN = 10_000_000
SYNTHETIC_UNIVERSE_MAX = 19_999_999
SYNTHETIC_PLACE_OFFSET = 100_000_000_000  # guess: root place id = universe id + this

ROCAMPING_UNIVERSE, ROCAMPING_PLACE = 1685831367, 4922741943
SELFIE_UNIVERSE, SELFIE_PLACE = 3531439676, 9468764549

_ROCAMPING_SOURCE_DESC = (
    "RoCamping is a fun adventure game where the end-goal is to create the best camp ever. "
    "Gather resources, chop down trees, go down caves and much more! Start your journey today!"
    "\r\n\r\nNOTE: RoCamping is still in BETA so expect there to be glitches, if you find a "
    "glitch then don't hesitate to join our group and report it there.\r\n\r\n"
    "Current Version: BETA v3,0"
)
_SELFIE_DESC = (
    "Welcome to the Selfie Mode demo! This experience is designed to show off Selfie Mode "
    "developer module and its features, and is open source so that you can edit the experience "
    "and see how to use the API\r\n\r\nRead more:\r\n"
    "https://create.roblox.com/docs/tools/modules/selfie-mode"
)

# place id -> universe id (apis /universes/v1/places/{placeId}/universe)
PLACES: dict[int, int] = {
    ROCAMPING_PLACE: ROCAMPING_UNIVERSE,
    SELFIE_PLACE: SELFIE_UNIVERSE,
    16349154726: 5638577595,  # sample (openblox userGames / universeIdFromPlaceId)
    17718644108: 6069031486,  # sample (openblox develop universeInfo)
}

# games.roblox.com/v1/games entries
GAMES: dict[int, JsonObj] = {
    # sample: verbatim recorded capture
    SELFIE_UNIVERSE: {
        "id": SELFIE_UNIVERSE,
        "rootPlaceId": SELFIE_PLACE,
        "name": "Selfie Mode Demo",
        "description": _SELFIE_DESC,
        "sourceName": "Selfie Mode Demo",
        "sourceDescription": _SELFIE_DESC,
        "creator": {
            "id": 7384468,
            "name": "Roblox Arena Events",
            "type": "Group",
            "isRNVAccount": False,
            "hasVerifiedBadge": False,
        },
        "price": None,
        "allowedGearGenres": ["All"],
        "allowedGearCategories": [],
        "isGenreEnforced": True,
        "copyingAllowed": True,
        "playing": 0,
        "visits": 6863,
        "maxPlayers": 20,
        "created": "2022-04-25T23:33:11.96Z",
        "updated": "2022-12-01T21:14:18.023Z",
        "studioAccessToApisAllowed": False,
        "createVipServersAllowed": False,
        "universeAvatarType": "MorphToR15",
        "genre": "All",
        "isAllGenre": True,
        "isFavoritedByUser": False,
        "favoritedCount": 241,
    },
    # names/descriptions/dates/visits from samples (place details, group games); the
    # remaining fields (maxPlayers, genre, favoritedCount, ...) are guesses
    ROCAMPING_UNIVERSE: {
        "id": ROCAMPING_UNIVERSE,
        "rootPlaceId": ROCAMPING_PLACE,
        "name": "RoCamping",
        "description": _ROCAMPING_SOURCE_DESC + "\r\n\r\nalvinblox",
        "sourceName": "RoCamping",
        "sourceDescription": _ROCAMPING_SOURCE_DESC,
        "creator": {
            "id": 5850082,
            "name": "MightyPart Games",
            "type": "Group",
            "isRNVAccount": False,
            "hasVerifiedBadge": False,
        },
        "price": None,
        "allowedGearGenres": ["All"],
        "allowedGearCategories": [],
        "isGenreEnforced": False,
        "copyingAllowed": False,
        "playing": 0,
        "visits": 2721,
        "maxPlayers": 12,
        "created": "2020-04-20T20:36:21.117Z",
        "updated": "2022-05-27T16:36:40.1Z",
        "studioAccessToApisAllowed": False,
        "createVipServersAllowed": False,
        "universeAvatarType": "MorphToR15",
        "genre": "Adventure",
        "isAllGenre": False,
        "isFavoritedByUser": False,
        "favoritedCount": 62,
    },
}

# universe id -> (upVotes, downVotes); RoCamping sample, Selfie Mode guess
VOTES: dict[int, tuple[int, int]] = {ROCAMPING_UNIVERSE: (78, 14), SELFIE_UNIVERSE: (40, 3)}


def _develop(uid: int, place: int, name: str, creator: tuple[str, int, str]) -> JsonObj:
    game = GAMES[uid]
    return {
        "id": uid,
        "name": name,
        "description": game["description"],
        "isArchived": False,
        "rootPlaceId": place,
        "isActive": True,
        "privacyType": "Public",
        "creatorType": creator[0],
        "creatorTargetId": creator[1],
        "creatorName": creator[2],
        "created": game["created"],
        "updated": game["updated"],
    }


# develop.roblox.com/v1/universes/{id}; 6069031486 is the verbatim sample, others derived
DEVELOP_UNIVERSES: dict[int, JsonObj] = {
    ROCAMPING_UNIVERSE: _develop(
        ROCAMPING_UNIVERSE, ROCAMPING_PLACE, "RoCamping", ("Group", 5850082, "MightyPart Games")
    ),
    SELFIE_UNIVERSE: _develop(
        SELFIE_UNIVERSE, SELFIE_PLACE, "Selfie Mode Demo", ("Group", 7384468, "Roblox Arena Events")
    ),
    6069031486: {
        "id": 6069031486,
        "name": "MightyPart's Place: 06032024_1",
        "description": None,
        "isArchived": False,
        "rootPlaceId": 17718644108,
        "isActive": False,
        "privacyType": "Private",
        "creatorType": "User",
        "creatorTargetId": 45348281,
        "creatorName": "MightyPart",
        "created": "2024-06-03T09:42:56.27Z",
        "updated": "2024-06-03T09:42:56.27Z",
    },
}


def _pass(pid: int, name: str, product: int | None, price: int | None, owned: bool) -> JsonObj:
    return {
        "id": pid,
        "name": name,
        "displayName": name,
        "productId": product,
        "price": price,
        "sellerName": "MightyPart Games",
        "sellerId": 1536374574 if product is not None else None,
        "isOwned": owned,
    }


# games.roblox.com/v1/games/{universeId}/game-passes - sample (openblox universeGamePasses)
GAME_PASSES: dict[int, list[JsonObj]] = {
    ROCAMPING_UNIVERSE: [
        _pass(9063647, "Campers Club", 975542678, 350, True),
        _pass(9260419, "Support Us", None, None, False),
        _pass(9260480, "Donate", 979386303, 15, True),
        _pass(9820606, "Starterpack", 995094227, 100, True),
        _pass(11546631, "Donate Plusss", 1084063256, 250, False),
        _pass(880904271, "Name!!!", None, None, True),
        _pass(880843288, "Name!!!1", None, None, True),
        _pass(880933261, "name!", None, None, True),
        _pass(880882288, "My Pass", None, None, True),
        _pass(880670566, "My Pass", None, None, True),
    ],
    SELFIE_UNIVERSE: [],
}

_ROCAMPING_REF: JsonObj = {"id": ROCAMPING_UNIVERSE, "name": "RoCamping", "rootPlaceId": 4922741943}


def _badge(bid: int, name: str, desc: str, awarded: int, created: str, updated: str) -> JsonObj:
    return {
        "id": bid,
        "name": name,
        "description": desc,
        "displayName": name,
        "displayDescription": desc,
        "enabled": True,
        "iconImageId": 5316501478,
        "displayIconImageId": 5316501478,
        "created": created,
        "updated": updated,
        "statistics": {
            "pastDayAwardedCount": 0,
            "awardedCount": awarded,
            "winRatePercentage": 0,
        },
        "awardingUniverse": _ROCAMPING_REF,
    }


# badge 2124533401 is the sample; 2124533402..2124533425 are synthetic RoCamping badges so the
# universe badge list (25 badges) paginates.
BADGES: dict[int, JsonObj] = {
    2124533401: _badge(
        2124533401,
        "Tutorial Done",
        "Tutorial Lol",
        394,
        "2020-05-05T08:20:10.653Z",
        "2023-08-26T12:43:15.280Z",
    ),
    **{
        bid: _badge(
            bid,
            f"Camp Badge {bid - 2124533401}",
            f"Synthetic fixture badge number {bid - 2124533401}.",
            400 - (bid - 2124533401) * 10,
            "2020-06-01T12:00:00Z",
            "2021-01-01T12:00:00Z",
        )
        for bid in range(2124533402, 2124533426)
    },
}
UNIVERSE_BADGES: dict[int, list[int]] = {
    ROCAMPING_UNIVERSE: sorted(BADGES),
    SELFIE_UNIVERSE: [],
}
# user id -> badge ids (guess); every other existing user has none
USER_BADGES: dict[int, list[int]] = {45348281: list(range(2124533401, 2124533406))}


# -- synthetic universes ------------------------------------------------------------------------
_SYNTHETIC_CREATED, _SYNTHETIC_UPDATED = "2019-01-01T00:00:00Z", "2024-01-01T00:00:00Z"  # guess


def _synthetic(uid: int) -> bool:
    return SYNTHETIC_UNIVERSE_MIN <= uid <= SYNTHETIC_UNIVERSE_MAX


def _creator_of(uid: int) -> int:
    """The synthetic user who made synthetic universe ``uid``."""
    return SYNTHETIC_MIN + (uid - SYNTHETIC_UNIVERSE_MIN) % (SYNTHETIC_MAX - SYNTHETIC_MIN + 1)


def _visits(uid: int) -> int:
    return (uid * 7919) % 10_000_000


def universe_exists(uid: int) -> bool:
    """Whether ``games/v1/games`` knows the universe (named or synthetic)."""
    return uid in GAMES or _synthetic(uid)


def find_game(uid: int) -> JsonObj | None:
    """The ``games/v1/games`` entry of a universe, or None."""
    game = GAMES.get(uid)
    if game is not None or not _synthetic(uid):
        return game
    creator = _creator_of(uid)
    visits = _visits(uid)
    name = f"Game{uid}"
    return {
        "id": uid,
        "rootPlaceId": uid + SYNTHETIC_PLACE_OFFSET,
        "name": name,
        "description": "",
        "sourceName": name,
        "sourceDescription": "",
        "creator": {
            "id": creator,
            "name": f"User{creator}",
            "type": "User",
            "isRNVAccount": False,
            "hasVerifiedBadge": False,
        },
        "price": None,
        "allowedGearGenres": ["All"],
        "allowedGearCategories": [],
        "isGenreEnforced": False,
        "copyingAllowed": False,
        "playing": uid % 50,
        "visits": visits,
        "maxPlayers": 10 + uid % 40,
        "created": _SYNTHETIC_CREATED,
        "updated": _SYNTHETIC_UPDATED,
        "studioAccessToApisAllowed": False,
        "createVipServersAllowed": False,
        "universeAvatarType": "MorphToR15",
        "genre": "All",
        "isAllGenre": True,
        "isFavoritedByUser": False,
        "favoritedCount": visits // 50,
    }


def find_votes(uid: int) -> tuple[int, int] | None:
    """(upVotes, downVotes) of a universe, or None."""
    votes = VOTES.get(uid)
    if votes is None and _synthetic(uid):
        votes = (_visits(uid) // 100, _visits(uid) // 1000)
    return votes


def find_develop_universe(uid: int) -> JsonObj | None:
    """The ``develop/v1/universes/{id}`` record of a universe, or None."""
    found = DEVELOP_UNIVERSES.get(uid)
    if found is not None or not _synthetic(uid):
        return found
    creator = _creator_of(uid)
    return {
        "id": uid,
        "name": f"Game{uid}",
        "description": "",
        "isArchived": False,
        "rootPlaceId": uid + SYNTHETIC_PLACE_OFFSET,
        "isActive": True,
        "privacyType": "Public",
        "creatorType": "User",
        "creatorTargetId": creator,
        "creatorName": f"User{creator}",
        "created": _SYNTHETIC_CREATED,
        "updated": _SYNTHETIC_UPDATED,
    }


def universe_of_place(place_id: int) -> int | None:
    """The universe of a place (named or a synthetic root place), or None."""
    found = PLACES.get(place_id)
    if found is None and _synthetic(place_id - SYNTHETIC_PLACE_OFFSET):
        found = place_id - SYNTHETIC_PLACE_OFFSET
    return found
