"""Fixture data for the fake Roblox upstream: users, friends, presence and groups.

Everything here is plain, deterministic data (no randomness).  Values copied from public
samples (Roblox answers recorded in github.com/MaximumADHD/Roblox-Client-Tracker's
GraphqlHttpArtifacts, captures in wrapper docs such as openblox's JSDoc examples) are marked
*sample*; everything else is a plausible fixture value chosen for the fake and marked
*guess*.

Games and badges live in :mod:`bloxproxy.fake.data_content`; assets, catalog items and
avatars in :mod:`bloxproxy.fake.data_market`.

Synthetic populations, computed on demand (never stored), so benchmarks can use millions of
distinct ids:

* users ``SYNTHETIC_MIN..SYNTHETIC_MAX`` (1,000,000 - 9,999,999): name and displayName
  ``User<id>`` (``POST /v1/usernames/users`` finds ``user1000123`` -> 1000123, any case), a
  fixed creation date, no friends or followers; presence by the id's last digit (1: Online
  on the website, 2: InGame in RoCamping, otherwise Offline); ids ending in 999 are banned
  (``isBanned: true``, left out by ``excludeBannedUsers``); every one has thumbnails.
* groups ``SYNTHETIC_GROUP_MIN..SYNTHETIC_GROUP_MAX`` (20,000,000 - 29,999,999):
  ``Group<id>``, no owner (``owner: null``, as Roblox shows abandoned groups), no members,
  the three standard roles.
* large groups ``LARGE_GROUP_MIN..LARGE_GROUP_MAX`` (40,000,000 - 40,100,000), for long
  lists: like a synthetic group, but group ``40,000,000 + n`` has ``n`` members, the synthetic
  users ``1,000,000 .. 1,000,000 + n - 1`` in that order, all with the Member role (made
  page by page; users' group lists do not show them).

User id 4 does not exist (the catalog's documented 404 example).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar, overload

SYNTHETIC_MIN = 1_000_000
SYNTHETIC_MAX = 9_999_999
SYNTHETIC_CREATED = "2015-06-01T00:00:00Z"  # guess: fixed date for every synthetic user
SYNTHETIC_GROUP_MIN = 20_000_000
SYNTHETIC_GROUP_MAX = 29_999_999
SYNTHETIC_GROUP_CREATED = "2016-03-01T00:00:00Z"  # guess
LARGE_GROUP_MIN = 40_000_000
LARGE_GROUP_MAX = 40_100_000

#: The user whose avatar headshot is always ``Pending`` with ``imageUrl: null``.
PENDING_THUMBNAIL_USER_ID = 2

ROBLOX_DESCRIPTION = (
    "Welcome to the Roblox profile! This is where you can check out the newest items in the "
    "catalog, and get a jumpstart on exploring and building on our Imagination Platform. If you "
    "want news on updates to the Roblox platform, or great new experiences to play with friends, "
    "check out blog.roblox.com. Please note, this is an automated account. If you need to reach "
    "Roblox for any customer service needs find help at www.roblox.com/help"
)


@dataclass(frozen=True, slots=True)
class User:
    """A Roblox account as the users API describes it."""

    id: int
    name: str
    display_name: str
    created: str
    description: str = ""
    verified: bool = False
    previous_names: tuple[str, ...] = ()  # username history, oldest first
    banned: bool = False


def _u(uid: int, name: str, display: str | None = None, created: str = "") -> User:
    """A named user known only from search samples; created date is a guess."""
    return User(uid, name, display or name, created or "2012-01-01T00:00:00Z")


NAMED_USERS: dict[int, User] = {
    u.id: u
    for u in (
        # sample (verbatim users.get capture)
        User(1, "Roblox", "Roblox", "2006-02-27T21:06:40.3Z", ROBLOX_DESCRIPTION, verified=True),
        # guess: the Pending-thumbnail user ("John Doe" is the historic account 2)
        User(2, "John Doe", "John Doe", "2006-02-27T21:06:41.0Z"),
        # guess: plausible values for builderman (verified like the real account)
        User(156, "builderman", "builderman", "2006-02-28T05:00:00Z", verified=True),
        # sample names/ids (openblox); created date and description are guesses
        User(
            45348281,
            "MightyPart",
            "MightyPart",
            "2013-07-26T16:23:41.143Z",
            previous_names=("NamelessGuy2005", "parrrty"),
        ),
        # sample: the other users of the users.search capture for keyword "MightyPart"
        _u(2655994471, "MightyPartJr"),
        _u(109174199, "MightyPartyAnimal", "jonny"),
        _u(151051171, "MightyPartygirl101", "india"),
        _u(3886457808, "mightypartxl"),
        _u(31488865, "mightypartyrocker101"),
        _u(35463215, "mightyparty3"),
        _u(152196440, "MightyPartygirl234"),
        _u(141415414, "MightyPartygod49"),
        _u(153951993, "Mightypartylove"),
    )
}

# lower-case current or previous name -> user (users.by_usernames also matches old names)
NAME_INDEX: dict[str, User] = {}
for _user in NAMED_USERS.values():
    for _n in (*_user.previous_names, _user.name):
        NAME_INDEX[_n.lower()] = _user


def find_user(uid: int) -> User | None:
    """Return the user with this id (named or synthetic), or None."""
    user = NAMED_USERS.get(uid)
    if user is None and SYNTHETIC_MIN <= uid <= SYNTHETIC_MAX:
        name = f"User{uid}"
        user = User(uid, name, name, SYNTHETIC_CREATED, banned=uid % 1000 == 999)
    return user


def user_exists(uid: int) -> bool:
    """Whether the user id exists."""
    return uid in NAMED_USERS or SYNTHETIC_MIN <= uid <= SYNTHETIC_MAX


def _plain_number(text: str) -> bool:
    return text.isascii() and text.isdigit() and text[0] != "0"


def find_user_by_name(name: str) -> User | None:
    """Case-insensitive lookup by current or previous username (synthetic ``User<id>`` too)."""
    low = name.lower()
    user = NAME_INDEX.get(low)
    if user is None and low[:4] == "user" and _plain_number(low[4:]):
        user = find_user(int(low[4:]))
    return user


# friends/followers/followings counts: (friends, followers, followings); others 0.
# 45348281: sample values (openblox friendsCount/userFollowersCount/userFollowingsCount).
# 1, 156: guesses.  The friends list length always equals the friends count.
SOCIAL_COUNTS: dict[int, tuple[int, int, int]] = {
    1: (0, 11_000_000, 0),
    2: (0, 1_200, 0),
    156: (0, 2_400_000, 3),
    45348281: (47, 510, 337),
}
# friend lists: MightyPart's 47 friends are synthetic users 3,000,000..3,000,046 (guess)
FRIENDS: dict[int, range] = {45348281: range(3_000_000, 3_000_047)}

# presence overrides (guess): builderman online on the website, MightyPart in RoCamping.
_ONLINE: dict[str, object] = {"userPresenceType": 1, "lastLocation": "Website"}
_IN_ROCAMPING: dict[str, object] = {
    "userPresenceType": 2,
    "lastLocation": "RoCamping",
    "placeId": 4922741943,
    "rootPlaceId": 4922741943,
    "gameId": "0d082876-876f-4e00-90d7-91d4f9c8f5fb",
    "universeId": 1685831367,
}
PRESENCE: dict[int, dict[str, object]] = {156: _ONLINE, 45348281: _IN_ROCAMPING}


def presence_of(uid: int) -> dict[str, object]:
    """The fields of a user's presence that differ from Offline (named or synthetic)."""
    found = PRESENCE.get(uid)
    if found is not None:
        return found
    if SYNTHETIC_MIN <= uid <= SYNTHETIC_MAX:
        digit = uid % 10
        if digit == 1:
            return _ONLINE
        if digit == 2:
            return _IN_ROCAMPING
    return {}


@dataclass(frozen=True, slots=True)
class Role:
    """A group roleset."""

    id: int
    name: str
    rank: int
    description: str = ""


@dataclass(frozen=True, slots=True)
class Group:
    """A group with its roles and ordered members ``(user id, role)``."""

    id: int
    name: str
    description: str
    owner_id: int | None  # None: an ownerless (abandoned) group
    created: str
    roles: tuple[Role, ...]
    members: Sequence[tuple[int, Role]]
    public_entry: bool = True


_A = TypeVar("_A")
_B = TypeVar("_B")


class Mapped(Sequence[_B], Generic[_A, _B]):
    """``fn`` applied to each item of ``base``, item by item as they are asked for (a slice
    is another ``Mapped``): a list of thousands of members costs nothing until a page of it
    is answered."""

    __slots__ = ("_base", "_fn")

    def __init__(self, base: Sequence[_A], fn: Callable[[_A], _B]) -> None:
        self._base = base
        self._fn = fn

    def __len__(self) -> int:
        return len(self._base)

    @overload
    def __getitem__(self, index: int) -> _B: ...
    @overload
    def __getitem__(self, index: slice) -> Mapped[_A, _B]: ...
    def __getitem__(self, index: int | slice) -> _B | Mapped[_A, _B]:
        if isinstance(index, slice):
            return Mapped(self._base[index], self._fn)
        return self._fn(self._base[index])


# group 7 (guess): owned by Roblox (1); members = owner + synthetic 1,000,000..1,000,135 (137)
_G7_GUEST = Role(1007, "Guest", 0, "A non-group member.")
_G7_MEMBER = Role(1008, "Member", 1, "A regular group member.")
_G7_OWNER = Role(1009, "Owner", 255, "The group's owner.")
# group 5850082: name/roles/owner/memberCount from samples; Member role id is a guess;
# members = MightyPart + synthetic 2,000,000..2,000,100 (102, matching the sample memberCount)
_MPG_GUEST = Role(38353814, "Guest", 0, "A non-group member.")
_MPG_MEMBER = Role(38353812, "Mighty Member", 100)
_MPG_OWNER = Role(38353811, "Owner", 255)

GROUPS: dict[int, Group] = {
    7: Group(
        7,
        "Roblox Builders",
        "A group for builders, run by the Roblox account.",
        1,
        "2009-06-19T18:03:11.2Z",
        (_G7_GUEST, _G7_MEMBER, _G7_OWNER),
        ((1, _G7_OWNER), *((uid, _G7_MEMBER) for uid in range(1_000_000, 1_000_136))),
    ),
    5850082: Group(
        5850082,
        "MightyPart Games",
        "Welcome to my amazing group",
        45348281,
        "2020-03-29T18:15:20.1Z",
        (_MPG_GUEST, _MPG_MEMBER, _MPG_OWNER),
        ((45348281, _MPG_OWNER), *((uid, _MPG_MEMBER) for uid in range(2_000_000, 2_000_101))),
    ),
}


def find_group(gid: int) -> Group | None:
    """The group with this id (named or synthetic), or None."""
    group = GROUPS.get(gid)
    if group is None and SYNTHETIC_GROUP_MIN <= gid <= SYNTHETIC_GROUP_MAX:
        base = 4 * gid  # guess: role ids unique per synthetic group
        roles = (
            Role(base + 1, "Guest", 0, "A non-group member."),
            Role(base + 2, "Member", 1, "A regular group member."),
            Role(base + 3, "Owner", 255, "The group's owner."),
        )
        group = Group(gid, f"Group{gid}", "", None, SYNTHETIC_GROUP_CREATED, roles, ())
    elif group is None and LARGE_GROUP_MIN <= gid <= LARGE_GROUP_MAX:
        base = 4 * gid
        member = Role(base + 2, "Member", 1, "A regular group member.")
        roles = (
            Role(base + 1, "Guest", 0, "A non-group member."),
            member,
            Role(base + 3, "Owner", 255, "The group's owner."),
        )
        users = range(SYNTHETIC_MIN, SYNTHETIC_MIN + gid - LARGE_GROUP_MIN)
        members = Mapped(users, lambda uid: (uid, member))
        group = Group(gid, f"Group{gid}", "", None, SYNTHETIC_GROUP_CREATED, roles, members)
    return group


# user id -> [(group id, role)] for /v1/users/{userId}/groups/roles
MEMBERSHIPS: dict[int, list[tuple[int, Role]]] = {}
for _group in GROUPS.values():
    for _uid, _role in _group.members:
        MEMBERSHIPS.setdefault(_uid, []).append((_group.id, _role))

#: Search results are capped (guess: Roblox stops paging searches at some point).
SEARCH_MAX_RESULTS = 200


def search_users(keyword: str) -> list[User]:
    """Users matching a keyword: named users whose name contains it, then synthetic users
    whose ``user<id>`` name starts with it (capped at ``SEARCH_MAX_RESULTS``)."""
    low = keyword.lower()
    found = [u for u in NAMED_USERS.values() if low in u.name.lower()]
    if "user".startswith(low):
        ids = range(SYNTHETIC_MIN, SYNTHETIC_MAX + 1)
    elif low[:4] == "user" and _plain_number(low[4:]) and len(low) <= 11:
        digits = low[4:]
        scale = 10 ** (7 - len(digits))
        ids = range(int(digits) * scale, (int(digits) + 1) * scale)
    else:
        ids = range(0)
    for uid in ids[: max(0, SEARCH_MAX_RESULTS - len(found))]:
        user = find_user(uid)
        if user is not None:
            found.append(user)
    return found[:SEARCH_MAX_RESULTS]
