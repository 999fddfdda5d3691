"""The learned budgets in Redis, shared by every replica behind one egress IP.

With ``limits.upstream.shared`` and ``cache.redis.url``, each scope's :class:`.budget.Learner`
state — learned rate, GCRA time, generation, hold, window, Roblox's limit, strikes — is one
Redis hash, ``<prefix>rl:{upstream:<egress_id>:<scope>}``, changed only by two Lua scripts
that run :mod:`.budget`'s arithmetic on it atomically: ``take`` (a slot, or the wait for
one) and ``feedback`` (a 429, or Roblox's limit headers). So N replicas together keep to the
learned rate, and a 429 seen by one lowers it for all. Each script touches one key, named in
``KEYS[]``, hash-tagged per budget: it runs on Redis Cluster, Dragonfly and Valkey alike.

Time is Redis's ``TIME`` (replicas' clocks disagree; their monotonic clocks have no common
origin at all); tests pass their own instead. Every constant the arithmetic needs is
computed here in whole microseconds, so Python and Lua round alike (the contract test runs
one table against both). A failure is a :class:`~bloxproxy.errors.StoreUnavailable`; the
limiter then learns locally for a while (as :class:`bloxproxy.ratelimit.FallbackBuckets`).
"""

from __future__ import annotations

from ..errors import StoreUnavailable
from ..redisconn import REDIS_ERRORS, RedisClient, SlotScript
from .budget import US, RateHeaders, Slot, Tuning

__all__ = ["SharedBudgets"]

TTL_MS = 3_600_000  # a budget nobody used for an hour is forgotten (it starts over)

# ARGV[1..9] are common: ceiling, floor, decrease, increase, every_us, pause_base_us,
# pause_max_us, learn (1/0), now_us ('' = Redis TIME). The state: r rate, t GCRA time,
# g generation, h hold until, s window start, u slots used in it, l Roblox's limit (req/s),
# k strikes. Mirrors Learner (_clamp, _roll, _wait, _hold_for).
_COMMON = """
local ceiling = tonumber(ARGV[1])
local floor_ = tonumber(ARGV[2])
local decrease = tonumber(ARGV[3])
local increase = tonumber(ARGV[4])
local every = tonumber(ARGV[5])
local pause_base = tonumber(ARGV[6])
local pause_max = tonumber(ARGV[7])
local learn = ARGV[8] == '1'
local now
if ARGV[9] ~= '' then
  now = tonumber(ARGV[9])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local function interval_of(rate) return math.max(1, math.floor(1000000 / rate + 0.5)) end
local function burst_of(rate) return math.max(1, math.ceil(rate)) end
local f = redis.call('HMGET', KEYS[1], 'r', 't', 'g', 'h', 's', 'u', 'l', 'k')
local rate, tat, gen, hold, since, used, limit, strikes
if f[1] then
  rate, tat, gen, hold = tonumber(f[1]), tonumber(f[2]), tonumber(f[3]), tonumber(f[4])
  since, used, limit, strikes = tonumber(f[5]), tonumber(f[6]), tonumber(f[7]), tonumber(f[8])
else
  rate = ceiling
  tat = now + (burst_of(rate) - 1) * interval_of(rate)
  gen, hold, since, used, limit, strikes = 0, 0, now, 0, 0, 0
end
local function cap_of()
  if limit > 0 and limit < ceiling then return limit end
  return ceiling
end
local function clamp()
  local cap = cap_of()
  if rate > cap or not learn then rate = cap end
  rate = math.max(rate, math.min(floor_, cap))
end
local function roll()
  local elapsed = now - since
  if elapsed < every then return end
  if used > 0 then strikes = 0 end
  if learn and used >= 0.5 * rate * elapsed / 1000000 then
    rate = math.min(cap_of(), rate + increase)
  end
  since, used = now, 0
end
local function hold_for(wait)
  if wait > 0 then
    hold = math.max(hold, now + wait)
    local interval = interval_of(rate)
    tat = math.max(tat, hold + (burst_of(rate) - 1) * interval)
  end
end
local function save()
  redis.call('HSET', KEYS[1], 'r', string.format('%.17g', rate), 't', string.format('%.0f', tat),
    'g', string.format('%.0f', gen), 'h', string.format('%.0f', hold),
    's', string.format('%.0f', since), 'u', string.format('%.0f', used),
    'l', string.format('%.17g', limit), 'k', string.format('%.0f', strikes))
  redis.call('PEXPIRE', KEYS[1], %(ttl)d)
end
clamp()
""".replace("%(ttl)d", str(TTL_MS))

# take: {allowed, wait_us, gen, rate, held}
_TAKE = (
    _COMMON
    + """
roll()
local wait, held = 0, 0
if now + 1 < hold then
  wait, held = hold - now, 1
else
  local interval = interval_of(rate)
  local allow_at = math.max(tat, now) + interval - burst_of(rate) * interval
  wait = allow_at - now
  if wait <= 1 then wait = 0 end
end
if wait == 0 then
  tat = math.max(tat, now) + interval_of(rate)
  used = used + 1
end
save()
return {wait == 0 and 1 or 0, string.format('%.0f', wait), string.format('%.0f', gen),
  string.format('%.17g', rate), held}
"""
)

# feedback: ARGV[10] '429' (ARGV[11] the slot's gen, ARGV[12] retry-after µs or '') or
# 'limits' (ARGV[11] Roblox's limit req/s or '', ARGV[12] remaining or '', ARGV[13] reset
# µs or ''). Returns {rate, gen, hold_us (what this answer asked; 0 none)}.
_FEEDBACK = (
    _COMMON
    + """
local wait = 0
if ARGV[10] == '429' then
  roll()
  local escalate = 0
  if tonumber(ARGV[11]) == gen then
    gen = gen + 1
    strikes = strikes + 1
    if learn then rate = math.max(math.min(floor_, cap_of()), rate * decrease) end
    since, used = now, 0
    if strikes >= 2 then escalate = pause_base * 2 ^ (strikes - 2) end
  end
  local asked = escalate
  if ARGV[12] ~= '' then asked = tonumber(ARGV[12]) end
  wait = math.min(pause_max, asked)
  hold_for(wait)
else
  if ARGV[11] ~= '' then
    limit = tonumber(ARGV[11])
    clamp()
  end
  if ARGV[12] == '0' and ARGV[13] ~= '' and tonumber(ARGV[13]) > 0 then
    wait = math.min(pause_max, tonumber(ARGV[13]))
    hold_for(wait)
  end
end
save()
return {string.format('%.17g', rate), string.format('%.0f', gen), string.format('%.0f', wait)}
"""
)


def _common_args(tuning: Tuning, now: float | None) -> list[str | int | float]:
    return [
        repr(tuning.ceiling),
        repr(tuning.floor),
        repr(tuning.decrease),
        repr(tuning.increase),
        round(tuning.every * US),
        round(tuning.pause_base * US),
        round(tuning.pause_max * US),
        1 if tuning.learn else 0,
        "" if now is None else round(now * US),
    ]


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class SharedBudgets:
    """The scopes' learned budgets in Redis for one egress (see the module docstring)."""

    __slots__ = ("_client", "_feedback", "_prefix", "_take")

    def __init__(self, client: RedisClient, prefix: str, egress: str = "shared") -> None:
        self._client = client
        self._prefix = f"{prefix}rl:{{upstream:{egress}:"
        self._take = SlotScript(client, _TAKE)
        self._feedback = SlotScript(client, _FEEDBACK)

    def key(self, scope: str) -> str:
        """The scope's one key (its hash tag is the whole budget: egress and scope)."""
        return f"{self._prefix}{scope}}}"

    async def take(self, scope: str, tuning: Tuning, now: float | None = None) -> Slot:
        """A slot of ``scope``'s shared budget, or how long until one (``now``: tests')."""
        try:
            allowed, wait, gen, rate, held = await self._take(
                keys=[self.key(scope)], args=_common_args(tuning, now)
            )
        except REDIS_ERRORS as exc:
            raise StoreUnavailable(f"redis upstream budget failed: {exc}") from exc
        return Slot(
            bool(allowed), int(_text(wait)) / US, int(_text(gen)), float(_text(rate)), bool(held)
        )

    async def on_429(
        self,
        scope: str,
        tuning: Tuning,
        gen: int,
        retry_after: float | None,
        now: float | None = None,
    ) -> tuple[float, float]:
        """A 429 for a slot of generation ``gen``: the rate now, and the hold it asked."""
        after = "" if retry_after is None else round(retry_after * US)
        return await self._feed(scope, tuning, now, ["429", gen, after])

    async def on_headers(
        self, scope: str, tuning: Tuning, said: RateHeaders, now: float | None = None
    ) -> tuple[float, float]:
        """Roblox's limit headers: the rate now, and the hold they asked."""
        return await self._feed(
            scope,
            tuning,
            now,
            [
                "limits",
                "" if said.rate is None else repr(said.rate),
                "" if said.remaining is None else said.remaining,
                "" if said.reset is None else round(said.reset * US),
            ],
        )

    async def _feed(
        self, scope: str, tuning: Tuning, now: float | None, extra: list[str | int | float]
    ) -> tuple[float, float]:
        try:
            rate, _gen, wait = await self._feedback(
                keys=[self.key(scope)], args=[*_common_args(tuning, now), *extra]
            )
        except REDIS_ERRORS as exc:
            raise StoreUnavailable(f"redis upstream budget failed: {exc}") from exc
        return float(_text(rate)), int(_text(wait)) / US

    async def state(self, scope: str) -> dict[str, float]:
        """The stored state of ``scope`` (for tests and debugging; {} when none)."""
        try:
            raw = await self._client.hgetall(self.key(scope))
        except REDIS_ERRORS as exc:
            raise StoreUnavailable(f"redis upstream budget failed: {exc}") from exc
        return {_text(k): float(_text(v)) for k, v in raw.items()}
