-- A request ended. KEYS: per subject, the tokens HASH, the in-flight ZSET, the spend HASH and
-- the budget reservations HASH (see admit.lua).
-- ARGV: id, tokens used (-1: not reported, keep the reservation), cost in nano-USD (-1: not
-- reported, charge nothing).
-- Frees its place in flight and its budget reservation, replaces its reserved tokens with what
-- it used and adds its cost to the day, month and total, in one call.
local id, tokens, cost = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local day = math.floor(tonumber(t[1]) / 86400)
-- As in admit.lua (Redis scripts cannot share functions).
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
local month = month_of(day)
for i = 1, #KEYS, 4 do
  local tok, cur, spend, res = KEYS[i], KEYS[i + 1], KEYS[i + 2], KEYS[i + 3]
  redis.call('ZREM', cur, id)
  if tokens >= 0 then
    local old = redis.call('HGET', tok, id)
    if old then
      redis.call('HSET', tok, id, tokens)
      redis.call('HINCRBY', tok, '_total', tokens - tonumber(old))
    end
  end
  local r = redis.call('HGET', res, id)
  if r then
    redis.call('HINCRBY', res, '_total', -tonumber(r))
    redis.call('HDEL', res, id)
  end
  -- Spend is counted only once seeded from the ledger (which holds this request too).
  if cost > 0 and redis.call('HEXISTS', spend, 't') == 1 then
    redis.call('HINCRBY', spend, 't', cost)
    if tonumber(redis.call('HGET', spend, 'dk') or '-1') == day then
      redis.call('HINCRBY', spend, 'd', cost)
    else
      redis.call('HSET', spend, 'd', cost, 'dk', day)
    end
    if tonumber(redis.call('HGET', spend, 'mk') or '-1') == month then
      redis.call('HINCRBY', spend, 'm', cost)
    else
      redis.call('HSET', spend, 'm', cost, 'mk', month)
    end
  end
end
return 0
