"""The server-side Lua scripts: every lease change and every write that matters.

Each one runs atomically in Redis, so "check the lease, then write" has no gap a
newer owner could slip into. The keys they use are in docs/cluster.md. Multi-key
scripts whose keys are built inside them need a single Redis (or Sentinel), not
Redis Cluster.
"""

from __future__ import annotations

# Notes the server's run and time. A run_id other than the one recorded means the
# data went through a restart (with or without its contents): the epoch restarts,
# and with it the quarantine during which ACQUIRE grants nothing. Returns
# (now in µs, µs since the epoch began).
_EPOCH = """
local function epoch(key)
  local run = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local kind = redis.call('TYPE', key).ok
  if kind ~= 'hash' and kind ~= 'none' then
    return redis.error_reply('wa: ' .. key .. ' is not a hash')
  end
  if redis.call('HGET', key, 'run_id') ~= run then
    redis.call('HSET', key, 'run_id', run, 'since_us', string.format('%d', now))
    return now, 0
  end
  local since = tonumber(redis.call('HGET', key, 'since_us'))
  if not since then return redis.error_reply('wa: ' .. key .. ' has no since_us') end
  return now, now - since
end
"""

# KEYS: epoch, token counter, lease, expiry zset. ARGV: session, host, ttl_ms, min_token.
# {'ok', value} | {'held', value} | {'quarantine', ms left}
ACQUIRE = _EPOCH + """
local now, age = epoch(KEYS[1])
if type(now) == 'table' then return now end
local ttl_ms = tonumber(ARGV[3])
local left = ttl_ms * 1000 - age
if left > 0 then return {'quarantine', string.format('%d', math.ceil(left / 1000))} end
local holder = redis.call('GET', KEYS[3])
if holder then return {'held', holder} end
local last = tonumber(redis.call('GET', KEYS[2]) or '0')
if not last then return redis.error_reply('wa: ' .. KEYS[2] .. ' is not a number') end
local token = string.format('%d', math.max(last + 1, now, tonumber(ARGV[4]) + 1))
redis.call('SET', KEYS[2], token)
local value = token .. ' ' .. ARGV[2]
redis.call('SET', KEYS[3], value, 'PX', ttl_ms)
redis.call('ZADD', KEYS[4], math.floor(now / 1000) + ttl_ms, ARGV[1])
return {'ok', value}
"""

# KEYS: epoch, expiry zset, lease 1..n. ARGV: ttl_ms, then session and value per lease.
# One 1 (extended) or 0 (another value, none, or not a string) per lease.
RENEW = _EPOCH + """
local now = epoch(KEYS[1])
if type(now) == 'table' then return now end
local ttl_ms = tonumber(ARGV[1])
local out = {}
for i = 3, #KEYS do
  local session, value = ARGV[2 * (i - 3) + 2], ARGV[2 * (i - 3) + 3]
  local held = redis.pcall('GET', KEYS[i])
  if held == value then
    redis.call('PEXPIRE', KEYS[i], ttl_ms)
    redis.call('ZADD', KEYS[2], math.floor(now / 1000) + ttl_ms, session)
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
"""

# KEYS: lease, session hash, sessions set. ARGV: value, session, then field, value pairs.
# 1 written, 0 stale (the lease holds another value or none).
FENCED_WRITE = """
if redis.pcall('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local fields = {}
for i = 3, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[2], 'lease', ARGV[1], unpack(fields))
redis.call('SADD', KEYS[3], ARGV[2])
return 1
"""

# KEYS: lease, session hash, sessions set, expiry zset. ARGV: value, session.
FENCED_DELETE = """
if redis.pcall('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2], KEYS[1])
redis.call('SREM', KEYS[3], ARGV[2])
redis.call('ZREM', KEYS[4], ARGV[2])
return 1
"""

# KEYS: lease. ARGV: value.
RELEASE = """
if redis.pcall('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
"""

# KEYS: expiry zset, sessions set. ARGV: lease key prefix, now slack ms, limit.
# Sessions whose lease has expired (or never existed), oldest expiry first.
ORPHANS = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms, 'LIMIT', 0, tonumber(ARGV[2]) * 4)
for _, session in ipairs(due) do
  if #out >= tonumber(ARGV[2]) then break end
  if redis.call('SISMEMBER', KEYS[2], session) == 0 then
    redis.call('ZREM', KEYS[1], session)
  elseif redis.call('EXISTS', ARGV[1] .. session) == 0 then
    out[#out + 1] = session
  end
end
return out
"""

# KEYS: expiry zset. ARGV: horizon ms. Milliseconds until the first lease expires
# within the horizon (a lease not renewed: its host died or is failing), -1 if none;
# every survivor that asks wakes when it expires (cluster/pace.py).
NEXT_EXPIRY = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local first = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now_ms, now_ms + tonumber(ARGV[1]), 'WITHSCORES', 'LIMIT', 0, 1)
if #first == 0 then return -1 end
return tonumber(first[2]) - now_ms
"""

# KEYS: host hash, hosts set. ARGV: host, ttl_ms, then field, value pairs.
# Returns the instance of the heartbeat replaced ('' if none): another process's
# means two live daemons share one host_id (cluster/join.py).
HEARTBEAT = """
local t = redis.call('TIME')
local fields = {}
for i = 3, #ARGV do fields[#fields + 1] = ARGV[i] end
local previous = redis.pcall('HGET', KEYS[1], 'instance')
if type(previous) ~= 'string' then previous = '' end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'at_us', t[1] .. string.format('%06d', tonumber(t[2])), unpack(fields))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[1])
return previous
"""

# Redis's clock, as {seconds, microseconds}.
NOW = "return redis.call('TIME')"

# KEYS: epoch. {now µs, since_us or ''}: how long ago Redis's current run began
# (cluster/reclaim.py); '' when no script has noticed this run yet.
EPOCH_AGE = """
local t = redis.call('TIME')
local since = redis.pcall('HGET', KEYS[1], 'since_us')
if type(since) ~= 'string' then since = '' end
return {t[1] .. string.format('%06d', tonumber(t[2])), since}
"""
