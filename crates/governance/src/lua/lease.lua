-- Lease a slice of one subject's limits to an instance (after prelude.lua), so that it admits
-- requests on its own until the lease ends. KEYS: log, tok, cur, spend, res, lw.
-- ARGV: lease id ('L...'), lease ms, hold ms (how long its places in flight are kept if the
-- instance dies), wanted requests, tokens, places in flight, budget (nano-USD), one request's
-- tokens and cost (nano-USD), then rpm, tpm, max_concurrent, budget per day, per month, in
-- total (nano-USD; -1: none).
-- The lease is recorded as one log member dated at its end, so it counts in every minute that
-- any request admitted under it can fall in, with its weights, its tokens, a place in flight
-- and a budget reservation; the sum of leases and requests never passes a limit.
-- A lease takes at most a quarter of what is left and a sixteenth of the limit, and is granted
-- only when that covers sixteen requests (four at once): near a limit, or under a small one,
-- every request goes through admit.lua.
-- Returns {requests, tokens, in flight, budget} granted, or {0} for no lease.
local id, span, hold = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local want_r, want_t, want_k, want_b = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local unit_t, unit_b = tonumber(ARGV[8]), tonumber(ARGV[9])
local rpm, tpm, maxc = tonumber(ARGV[10]), tonumber(ARGV[11]), tonumber(ARGV[12])
local bday, bmonth, btotal = tonumber(ARGV[13]), tonumber(ARGV[14]), tonumber(ARGV[15])
local log, tok, cur, spend, res, lw = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
prune(log, tok, cur, spend, res, lw)

-- What a lease may take of one limit: `want`, or less; -1 when that is under `least`.
local function slice(want, limit, used, least)
  if limit < 0 then
    return want
  end
  local g = math.min(want, math.floor((limit - used) / 4), math.floor(limit / 16))
  if g < least then
    return -1
  end
  return g
end

local r = slice(want_r, rpm, requests(log, lw), 16)
local tk = slice(want_t, tpm, tonumber(redis.call('HGET', tok, '_total') or '0'), 16 * unit_t)
local k = slice(want_k, maxc, in_flight(cur, lw), 4)
local b = want_b
if bday >= 0 or bmonth >= 0 or btotal >= 0 then
  local d, m, all = budget_used(spend, res)
  if not d then
    return {0}
  end
  for _, p in ipairs({{bday, d}, {bmonth, m}, {btotal, all}}) do
    if p[1] >= 0 then
      b = math.min(b, slice(want_b, p[1], p[2], 16 * unit_b))
    end
  end
end
if r < 0 or tk < 0 or k < 0 or b < 0 then
  return {0}
end

redis.call('ZADD', log, now + span, id)
weigh(lw, 'r', id, r)
redis.call('HSET', tok, id, tk)
redis.call('HINCRBY', tok, '_total', tk)
redis.call('ZADD', cur, now + hold, id)
weigh(lw, 'k', id, k)
if b > 0 then
  redis.call('HSET', res, id, b)
  redis.call('HINCRBY', res, '_total', b)
end
redis.call('PEXPIRE', log, span + 120000)
redis.call('PEXPIRE', tok, span + 120000)
redis.call('PEXPIRE', cur, hold + 60000)
redis.call('PEXPIRE', res, hold + 60000)
redis.call('PEXPIRE', lw, span + hold + 120000)
return {r, tk, k, b}
