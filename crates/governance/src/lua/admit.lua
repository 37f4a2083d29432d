-- Admit one request under every subject's limits and budgets, all or nothing (after
-- prelude.lua). Per subject i, six keys from KEYS[6i+1]: log, tok, cur, spend, res, lw.
-- ARGV: id, tokens, lease ms, cost (nano-USD), then per subject: rpm, tpm, max_concurrent,
-- budget per day, per month, in total (nano-USD); -1: none.
-- Returns {-1, 0, 0} when admitted, else {subject index, reason, detail}:
-- reason 1 concurrency, 2 rpm, 3 tpm (detail: wait ms), 4 larger than the tpm on its own,
-- 5 budget (detail: 1 day, 2 month, 3 total; a fourth element: nano-USD used or reserved),
-- 6 the subject's spend is not in Redis yet: seed it from the ledger and call again.
local id, tokens, lease, cost = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local n = #KEYS / 6

for i = 0, n - 1 do
  local log, tok, cur, spend, res, lw = KEYS[6 * i + 1], KEYS[6 * i + 2], KEYS[6 * i + 3], KEYS[6 * i + 4], KEYS[6 * i + 5], KEYS[6 * i + 6]
  local rpm = tonumber(ARGV[5 + 6 * i])
  local tpm = tonumber(ARGV[6 + 6 * i])
  local maxc = tonumber(ARGV[7 + 6 * i])
  local bday = tonumber(ARGV[8 + 6 * i])
  local bmonth = tonumber(ARGV[9 + 6 * i])
  local btotal = tonumber(ARGV[10 + 6 * i])
  prune(log, tok, cur, spend, res, lw)
  if maxc >= 0 and in_flight(cur, lw) >= maxc then
    return {i, 1, 1000}
  end
  if rpm >= 0 and requests(log, lw) >= rpm then
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
    local d, m, all = budget_used(spend, res)
    if not d then
      return {i, 6, 0}
    end
    if bday >= 0 and d + cost > bday then
      return {i, 5, 1, d}
    end
    if bmonth >= 0 and m + cost > bmonth then
      return {i, 5, 2, m}
    end
    if btotal >= 0 and all + cost > btotal then
      return {i, 5, 3, all}
    end
  end
end
for i = 0, n - 1 do
  local log, tok, cur, res = KEYS[6 * i + 1], KEYS[6 * i + 2], KEYS[6 * i + 3], KEYS[6 * i + 5]
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
