-- Admit one request under every subject's limits, all or nothing, with Redis's own clock.
-- Per subject i, three keys: KEYS[3i+1] the minute's log (ZSET id -> admitted ms),
-- KEYS[3i+2] tokens per id plus '_total' (HASH), KEYS[3i+3] in flight (ZSET id -> lease end ms).
-- ARGV: id, tokens, lease ms, then per subject: rpm, tpm, max_concurrent (-1: none).
-- Returns {-1, 0, 0} when admitted, else {subject index, reason, wait ms}:
-- reason 1 concurrency, 2 rpm, 3 tpm, 4 larger than the tpm on its own (wait -1).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id, tokens, lease = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local n = #KEYS / 3
for i = 0, n - 1 do
  local log, tok, cur = KEYS[3 * i + 1], KEYS[3 * i + 2], KEYS[3 * i + 3]
  local rpm = tonumber(ARGV[4 + 3 * i])
  local tpm = tonumber(ARGV[5 + 3 * i])
  local maxc = tonumber(ARGV[6 + 3 * i])
  local old = redis.call('ZRANGEBYSCORE', log, '-inf', now - 60000)
  if #old > 0 then
    redis.call('ZREMRANGEBYSCORE', log, '-inf', now - 60000)
    local sum = 0
    for _, m in ipairs(old) do
      sum = sum + tonumber(redis.call('HGET', tok, m) or '0')
      redis.call('HDEL', tok, m)
    end
    redis.call('HINCRBY', tok, '_total', -sum)
  end
  -- Leases of requests whose instance died end on their own.
  redis.call('ZREMRANGEBYSCORE', cur, '-inf', now)
  if maxc >= 0 and redis.call('ZCARD', cur) >= maxc then
    return {i, 1, 1000}
  end
  if rpm >= 0 and redis.call('ZCARD', log) >= rpm then
    local first = redis.call('ZRANGE', log, 0, 0, 'WITHSCORES')
    return {i, 2, tonumber(first[2]) + 60000 - now}
  end
  if tpm >= 0 then
    if tokens > tpm then
      return {i, 4, -1}
    end
    local total = tonumber(redis.call('HGET', tok, '_total') or '0')
    if total + tokens > tpm then
      local entries = redis.call('ZRANGE', log, 0, -1, 'WITHSCORES')
      local used = total
      for j = 1, #entries, 2 do
        used = used - tonumber(redis.call('HGET', tok, entries[j]) or '0')
        if used + tokens <= tpm then
          return {i, 3, tonumber(entries[j + 1]) + 60000 - now}
        end
      end
      return {i, 3, 60000}
    end
  end
end
for i = 0, n - 1 do
  local log, tok, cur = KEYS[3 * i + 1], KEYS[3 * i + 2], KEYS[3 * i + 3]
  redis.call('ZADD', log, now, id)
  redis.call('HSET', tok, id, tokens)
  redis.call('HINCRBY', tok, '_total', tokens)
  redis.call('ZADD', cur, now + lease, id)
  redis.call('PEXPIRE', log, 120000)
  redis.call('PEXPIRE', tok, 120000)
  redis.call('PEXPIRE', cur, lease + 60000)
end
return {-1, 0, 0}
