"""The intake throttle's counter as one Redis script (no Django here: the benchmarks' store
replay runs it too)."""

# Sliding-window counter: the current fixed window's count plus the previous window's,
# weighted by how much of it still lies within `window` of now. Clock: the Redis server's.
# KEYS[1] key prefix; ARGV[1] limit, ARGV[2] window (ms). Returns {allowed, wait (ms)}.
SLIDING_WINDOW = """
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local index = math.floor(now / window)
local elapsed = now - index * window
local current_key = KEYS[1] .. ':' .. index
local current = tonumber(redis.call('GET', current_key) or '0')
local previous = tonumber(redis.call('GET', KEYS[1] .. ':' .. (index - 1)) or '0')
local remaining = window - elapsed
if previous * remaining / window + current + 1 > limit then
  local wait = remaining
  if current + 1 <= limit and previous > 0 then
    -- the previous window's weight falls until one more request fits
    wait = remaining - (limit - current - 1) * window / previous
  end
  return {0, math.max(1, math.ceil(wait))}
end
redis.call('INCR', current_key)
redis.call('PEXPIRE', current_key, 2 * window)
return {1, 0}
"""
