"""Upstream access: everything that talks to Roblox (or whatever stands in for it).

- :mod:`.client` — :class:`UpstreamRequest`, the one ``ClientSession`` and :class:`Upstream`;
- :mod:`.guard` — the client middleware each call goes through: retry → csrf → admission;
- :mod:`.retry`, :mod:`.breaker`, :mod:`.csrf` — its steps' decisions;
- :mod:`.limiter` — each scope's budget and the fair line to wait in for it; its parts:
  :mod:`.budget` (how a budget learns, pure), :mod:`.fairshare` (who is served next, pure),
  :mod:`.shared` (the budgets in Redis, for every replica of an egress);
- :mod:`.inflight` — the byte budget over upstream bodies held at once.
"""
