"""The Lua scripts RedisBackend runs: each one step, atomic on the Redis that holds the room.

A room with history has two keys: its position, a hash with the epoch (``e``)
and the latest offset (``s``), and its stream, whose entry ids are the offsets
(``<offset>-0``) and whose field ``d`` holds the encoded body. The position is
kept for ``position_ttl``, the stream for the namespace's ``History.ttl``: a
quiet room keeps its position after its messages expire. A position that is
created anew (first use, or forgotten) gets the epoch the caller proposed, and
any stream left over from an older epoch is dropped with it, so offsets restart
at 1 only together with a new epoch.
"""

from __future__ import annotations

from typing import Final

__all__ = ["HISTORY", "PRESENCE", "PUBLISH"]

#: KEYS: position, stream. ARGV: body, size, stream ttl (ms), position ttl (s),
#: proposed epoch, channel, version. Appends, trims, publishes; returns {offset, epoch}.
PUBLISH: Final = """
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  epoch = ARGV[5]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', epoch)
end
local offset = redis.call('HINCRBY', KEYS[1], 's', 1)
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[2], offset .. '-0', 'd', ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('PUBLISH', ARGV[6], ARGV[7] .. ':' .. offset .. ':' .. epoch .. ':' .. ARGV[1])
return {offset, epoch}
"""

#: KEYS: position, stream. ARGV: proposed epoch, position ttl (s), since offset
#: ('' for none), since epoch, limit ('' for none). Returns {top offset, epoch,
#: entries}: with since, the entries after it (the first `limit`), only when the
#: epochs match and something was missed; without since, the last `limit`
#: entries, newest first (none without a limit).
HISTORY: Final = """
local position = redis.call('HMGET', KEYS[1], 'e', 's')
local epoch = position[1]
local top = tonumber(position[2] or '0')
if not epoch then
  epoch = ARGV[1]
  top = 0
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', epoch, 's', 0)
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
local entries = {}
if ARGV[3] ~= '' then
  if ARGV[4] == epoch then
    local since = tonumber(ARGV[3])
    if since < top then
      local start = string.format('%d-1', since)
      if ARGV[5] ~= '' then
        entries = redis.call('XRANGE', KEYS[2], start, '+', 'COUNT', ARGV[5])
      else
        entries = redis.call('XRANGE', KEYS[2], start, '+')
      end
    end
  end
elseif ARGV[5] ~= '' and top > 0 then
  entries = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', ARGV[5])
end
return {top, epoch, entries}
"""

#: KEYS: presence hash (client id -> entry), lease sorted set (client id -> expiry,
#: ms of Redis's clock). ARGV: ms an entry is held, key ttl (s), '1' to list every
#: entry, then client id and entry pairs to hold (added, or held again). Removes
#: every entry whose lease ran out, atomically, so that exactly one caller gets
#: each. Returns {expired id and entry pairs, every id and entry pair or {}}.
PRESENCE: Final = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
for i = 4, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[1]), ARGV[i])
end
if #ARGV >= 4 then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  redis.call('EXPIRE', KEYS[2], ARGV[2])
end
local expired = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)) do
  local entry = redis.call('HGET', KEYS[1], id)
  redis.call('HDEL', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
  if entry then
    expired[#expired + 1] = id
    expired[#expired + 1] = entry
  end
end
local all = {}
if ARGV[3] == '1' then
  all = redis.call('HGETALL', KEYS[1])
end
return {expired, all}
"""
