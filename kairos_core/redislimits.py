"""Rate-limit counters in Redis, shared by every worker and instance (DESIGN.md §8).

Rule: a limited request costs **one** Redis round trip, whatever its policy: one ``EVALSHA`` (on
the request path's pipelined connection, :mod:`kairos_core.redispipe`; after a Redis restart the
first one loads the script again) of
:data:`SCRIPT` charges every key of the request (all parts of a Composite, in order) atomically
and answers, per key, whether it passed, what remains, and the milliseconds until the window
resets and until a refused request may retry — what the ``RateLimit-*`` headers need, exactly.
The counting is that of :class:`~kairos_core.ratelimit.MemoryLimits`, on Redis's clock (``TIME``)
so that every process counts on the same one:

- **FixedWindow**: ``INCR``, and ``PEXPIRE`` by ``window_duration`` at the first hit (the rule
  of ``limits``' ``incr_expire`` script); a refused hit still counts;
- **SlidingWindow**: ``limits``' moving window: a list of hit times, newest first, trimmed to the
  limit; a hit is refused while the limit-th newest is inside the window, and a refused hit is
  not recorded;
- **TokenBucket**: tokens and last update in a hash, refilled continuously, starting full, gone
  once full again.

Keys: ``<cluster.key_prefix>:<rate_limit.redis_key_prefix>:<scope>:<parts>:<window type>:
<requests>+<burst>/<window>s``: the policy scope of :func:`~kairos_core.ratelimit.limit_keys`,
and the numbers, so two policies with other numbers never share a counter.

When Redis cannot answer (:class:`~kairos_core.redislink.RedisLink` down, or this call failed or
timed out), ``cluster.on_redis_error`` decides: ``allow`` charges this process's own counters
(the request is limited, per process, as without a cluster), ``deny`` answers 503
``cluster_unavailable`` (``Retry-After: 1``). A call that timed out may still have been counted
by Redis.

Why not ``limits``' own async Redis storage (``async+redis://``, ``implementation="redispy"``):
its strategies answer allowed / refused in one round trip, but the remaining count and the reset
time cost one or two more per key (``get_window_stats``), so a two-part Composite would cost up
to six round trips where this script costs one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, Literal

from kairos_core.errors import GatewayError
from kairos_core.ratelimit import Charge, LimitDecision, MemoryLimits, capacity
from kairos_core.redislink import RedisLink, RedisUnavailable
from kairos_core.redispipe import RedisPipe, RespError

SCRIPT = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for i, key in ipairs(KEYS) do
  local a = (i - 1) * 4
  local kind = ARGV[a + 1]
  local limit = tonumber(ARGV[a + 2])
  local window = tonumber(ARGV[a + 3])
  local allowed, remaining, reset, retry
  if kind == 'F' then
    local count = redis.call('INCR', key)
    local ttl = redis.call('PTTL', key)
    if count == 1 or ttl < 0 then
      redis.call('PEXPIRE', key, window)
      ttl = window
    end
    if count <= limit then allowed = 1 else allowed = 0 end
    remaining = math.max(limit - count, 0)
    reset = ttl
    retry = ttl
  elseif kind == 'S' then
    local limitth = redis.call('LINDEX', key, limit - 1)
    if limitth and tonumber(limitth) >= now - window then
      allowed = 0
    else
      redis.call('LPUSH', key, now)
      redis.call('LTRIM', key, 0, limit - 1)
      redis.call('PEXPIRE', key, window)
      allowed = 1
    end
    local low, high, last = 0, redis.call('LLEN', key) - 1, -1
    while low <= high do
      local mid = math.floor((low + high) / 2)
      if tonumber(redis.call('LINDEX', key, mid)) > now - window then
        last = mid
        low = mid + 1
      else
        high = mid - 1
      end
    end
    remaining = limit - (last + 1)
    if last >= 0 then
      reset = tonumber(redis.call('LINDEX', key, last)) + window - now
    else
      reset = window
    end
    retry = reset
  else
    local rate = tonumber(ARGV[a + 4]) / window
    local state = redis.call('HMGET', key, 't', 'u')
    local tokens = tonumber(state[1]) or limit
    local updated = tonumber(state[2]) or now
    tokens = math.min(limit, tokens + math.max(now - updated, 0) * rate)
    if tokens >= 1 then
      tokens = tokens - 1
      allowed = 1
    else
      allowed = 0
    end
    reset = math.ceil((limit - tokens) / rate)
    redis.call('HSET', key, 't', tostring(tokens), 'u', now)
    redis.call('PEXPIRE', key, math.max(reset, 1))
    remaining = math.floor(tokens)
    if tokens >= 1 then retry = 0 else retry = math.ceil((1 - tokens) / rate) end
  end
  out[#out + 1] = allowed
  out[#out + 1] = remaining
  out[#out + 1] = reset
  out[#out + 1] = retry
end
return out
"""
SCRIPT_SHA = hashlib.sha1(SCRIPT.encode()).hexdigest()
_KINDS = {"FixedWindow": "F", "SlidingWindow": "S", "TokenBucket": "T"}
OnRedisError = Literal["allow", "deny"]


class RedisLimits:
    """The counters of every limited request in Redis, one script call per request."""

    def __init__(
        self, link: RedisLink, key_prefix: str, on_redis_error: OnRedisError = "allow"
    ) -> None:
        self._link = link
        self._prefix = key_prefix
        self.on_redis_error: OnRedisError = on_redis_error  # set again at every config swap

    async def charge(self, charges: Sequence[Charge], local: MemoryLimits) -> list[LimitDecision]:
        keys: list[str] = []
        args: list[Any] = []
        limits: list[int] = []
        for policy, key in charges:
            limit = capacity(policy)
            window_type = policy.window_type
            keys.append(
                f"{self._prefix}:{key}:{window_type}:{policy.requests_per_window}"
                f"+{policy.burst_allowance}/{policy.window_duration}s"
            )
            args += (
                _KINDS[window_type],
                limit,
                policy.window_duration * 1000,
                policy.requests_per_window,
            )
            limits.append(limit)

        async def run(pipe: RedisPipe) -> Any:
            try:
                return await pipe.call("EVALSHA", SCRIPT_SHA, len(keys), *keys, *args)
            except RespError as exc:
                if not str(exc).startswith("NOSCRIPT"):
                    raise
            await pipe.call("SCRIPT", "LOAD", SCRIPT)  # Redis restarted, or its cache was flushed
            return await pipe.call("EVALSHA", SCRIPT_SHA, len(keys), *keys, *args)

        try:
            reply = await self._link.request(run)
        except RedisUnavailable as exc:
            if self.on_redis_error == "deny":
                raise GatewayError(
                    "cluster_unavailable",
                    "the shared rate-limit state is unreachable and cluster.on_redis_error is "
                    "'deny'; retry later",
                    (("Retry-After", "1"),),
                ) from exc
            return local.charge(charges)
        return [
            LimitDecision(
                bool(reply[i * 4]),
                limit,
                int(reply[i * 4 + 1]),
                int(reply[i * 4 + 2]) / 1000,
                int(reply[i * 4 + 3]) / 1000,
            )
            for i, limit in enumerate(limits)
        ]
