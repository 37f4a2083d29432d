-- The start of every script here (the Rust side puts it in front; Redis scripts cannot share
-- functions): Redis's own clock, the calendar, and the upkeep of a subject's keys.
--
-- A subject's keys: log (ZSET id -> admitted ms: the sliding minute), tok (HASH id -> tokens,
-- '_total'), cur (ZSET id -> ms its place in flight ends), spend (HASH: t total, d/dk the day's
-- spend and day number, m/mk the month's; nano-USD), res (HASH id -> budget reserved in flight,
-- '_total'), lw (HASH: the weights of leases).
--
-- A lease (an id starting with 'L') is one member standing for many: an instance admits up to
-- 'r:'..id requests and 'k:'..id at once on its own. lw's '_r' and '_k' sum the weights above
-- one, so a subject's requests in the minute are ZCARD(log) + _r and in flight ZCARD(cur) + _k.
local t = redis.call('TIME')
local secs = tonumber(t[1])
local now = secs * 1000 + math.floor(tonumber(t[2]) / 1000)

-- Days since 1970 to year * 12 + month - 1 (H. Hinnant's civil calendar; the same in calendar.rs).
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

local function is_lease(m)
  return string.byte(m, 1) == 76
end

-- Set lease m's weight of kind 'r' or 'k' to w (0: gone), keeping '_'..kind.
local function weigh(lw, kind, m, w)
  local f = kind .. ':' .. m
  local old = tonumber(redis.call('HGET', lw, f) or '1')
  if w == 0 then
    redis.call('HDEL', lw, f)
    redis.call('HINCRBY', lw, '_' .. kind, 1 - old)
  else
    redis.call('HSET', lw, f, w)
    redis.call('HINCRBY', lw, '_' .. kind, w - old)
  end
end

local function requests(log, lw)
  return redis.call('ZCARD', log) + tonumber(redis.call('HGET', lw, '_r') or '0')
end

local function in_flight(cur, lw)
  return redis.call('ZCARD', cur) + tonumber(redis.call('HGET', lw, '_k') or '0')
end

-- Add cost (nano-USD) to the day, month and total of a spend HASH, once it is seeded from the
-- ledger (which holds this spend too).
local function charge(spend, cost)
  if cost <= 0 or redis.call('HEXISTS', spend, 't') == 0 then
    return
  end
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

-- Drop what left the minute, and the places in flight of requests and leases whose instance
-- died (their leases ended), with their budget reservations. A dead instance's lease may have
-- spent what it reserved without saying so: that is charged, never forgotten.
local function prune(log, tok, cur, spend, res, lw)
  local old = redis.call('ZRANGEBYSCORE', log, '-inf', now - 60000)
  if #old > 0 then
    redis.call('ZREMRANGEBYSCORE', log, '-inf', now - 60000)
    local sum = 0
    for _, m in ipairs(old) do
      sum = sum + tonumber(redis.call('HGET', tok, m) or '0')
      redis.call('HDEL', tok, m)
      if is_lease(m) then
        weigh(lw, 'r', m, 0)
      end
    end
    redis.call('HINCRBY', tok, '_total', -sum)
  end
  local dead = redis.call('ZRANGEBYSCORE', cur, '-inf', now)
  if #dead > 0 then
    redis.call('ZREMRANGEBYSCORE', cur, '-inf', now)
    for _, m in ipairs(dead) do
      local r = redis.call('HGET', res, m)
      if r then
        redis.call('HINCRBY', res, '_total', -tonumber(r))
        redis.call('HDEL', res, m)
      end
      if is_lease(m) then
        weigh(lw, 'k', m, 0)
        if r then
          charge(spend, tonumber(r))
        end
      end
    end
  end
end

-- Budget used or reserved (nano-USD) per day, month and total; nil while the spend is not seeded.
local function budget_used(spend, res)
  local s = redis.call('HMGET', spend, 't', 'd', 'dk', 'm', 'mk')
  if not s[1] then
    return nil
  end
  local reserved = tonumber(redis.call('HGET', res, '_total') or '0')
  local d = (tonumber(s[3]) == day) and tonumber(s[2]) or 0
  local m = (tonumber(s[5]) == month) and tonumber(s[4]) or 0
  return d + reserved, m + reserved, tonumber(s[1]) + reserved
end
