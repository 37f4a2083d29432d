-- Admit one request under every subject's limits and budgets, all or nothing, with Redis's
-- own clock. Per subject i, five keys: KEYS[5i+1] the minute's log (ZSET id -> admitted ms),
-- KEYS[5i+2] tokens per id plus '_total' (HASH), KEYS[5i+3] in flight (ZSET id -> lease end
-- ms), KEYS[5i+4] spend (HASH: t total, d/dk the day's spend and day number, m/mk the month's),
-- KEYS[5i+5] budget reservations in flight (HASH id -> nano-USD, plus '_total').
-- ARGV: id, tokens, lease ms, cost (nano-USD), then per subject: rpm, tpm, max_concurrent,
-- budget per day, per month, in total (nano-USD); -1: none.
-- Returns {-1, 0, 0} when admitted, else {subject index, reason, detail}:
-- reason 1 concurrency, 2 rpm, 3 tpm (detail: wait ms), 4 larger than the tpm on its own,
-- 5 budget (detail: 1 day, 2 month, 3 total; a fourth element: nano-USD used or reserved),
-- 6 the subject's spend is not in Redis yet: seed it from the ledger and call again.
local t = redis.call('TIME')
local secs = tonumber(t[1])
local now = secs * 1000 + math.floor(tonumber(t[2]) / 1000)
local id, tokens, lease, cost = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local n = #KEYS / 5

-- Days since 1970 to year * 12 + month - 1 (H. Hinnant's civil calendar; the same in budget.rs).
local function month_of(days)
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return y * 12 + m - 1
end
local day = math.floor(secs / 86400)
local month = month_of(day)

for i = 0, n - 1 do
  local log, tok, cur, spend, res = KEYS[5 * i + 1], KEYS[5 * i + 2], KEYS[5 * i + 3], KEYS[5 * i + 4], KEYS[5 * i + 5]
  local rpm = tonumber(ARGV[5 + 6 * i])
  local tpm = tonumber(ARGV[6 + 6 * i])
  local maxc = tonumber(ARGV[7 + 6 * i])
  local bday = tonumber(ARGV[8 + 6 * i])
  local bmonth = tonumber(ARGV[9 + 6 * i])
  local btotal = tonumber(ARGV[10 + 6 * i])
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
  -- Leases of requests whose instance died end on their own, with their budget reservations.
  local dead = redis.call('ZRANGEBYSCORE', cur, '-inf', now)
  if #dead > 0 then
    redis.call('ZREMRANGEBYSCORE', cur, '-inf', now)
    for _, m in ipairs(dead) do
      local r = redis.call('HGET', res, m)
      if r then
        redis.call('HINCRBY', res, '_total', -tonumber(r))
        redis.call('HDEL', res, m)
      end
    end
  end
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
  if bday >= 0 or bmonth >= 0 or btotal >= 0 then
    local s = redis.call('HMGET', spend, 't', 'd', 'dk', 'm', 'mk')
    if not s[1] then
      return {i, 6, 0}
    end
    local spent_day = (tonumber(s[3]) == day) and tonumber(s[2]) or 0
    local spent_month = (tonumber(s[5]) == month) and tonumber(s[4]) or 0
    local reserved = tonumber(redis.call('HGET', res, '_total') or '0')
    if bday >= 0 and spent_day + reserved + cost > bday then
      return {i, 5, 1, spent_day + reserved}
    end
    if bmonth >= 0 and spent_month + reserved + cost > bmonth then
      return {i, 5, 2, spent_month + reserved}
    end
    if btotal >= 0 and tonumber(s[1]) + reserved + cost > btotal then
      return {i, 5, 3, tonumber(s[1]) + reserved}
    end
  end
end
for i = 0, n - 1 do
  local log, tok, cur, res = KEYS[5 * i + 1], KEYS[5 * i + 2], KEYS[5 * i + 3], KEYS[5 * i + 5]
  redis.call('ZADD', log, now, id)
  redis.call('HSET', tok, id, tokens)
  redis.call('HINCRBY', tok, '_total', tokens)
  redis.call('ZADD', cur, now + lease, id)
  redis.call('PEXPIRE', log, 120000)
  redis.call('PEXPIRE', tok, 120000)
  redis.call('PEXPIRE', cur, lease + 60000)
  if cost > 0 then
    redis.call('HSET', res, id, cost)
    redis.call('HINCRBY', res, '_total', cost)
    redis.call('PEXPIRE', res, lease + 60000)
  end
end
return {-1, 0, 0}
