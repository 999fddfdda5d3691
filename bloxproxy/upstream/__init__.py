"""Upstream access: everything that talks to Roblox (or whatever stands in for it).

- :mod:`.client` — :class:`UpstreamRequest`, the one ``ClientSession`` and :class:`Upstream`;
- :mod:`.guard` — the client middleware each call goes through: retry → csrf → admission;
- :mod:`.retry`, :mod:`.breaker`, :mod:`.csrf`, :mod:`.limiter` — its steps' decisions;
- :mod:`.inflight` — the byte budget over upstream bodies held at once.
"""
