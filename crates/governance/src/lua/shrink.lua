-- An instance reports what a lease it stopped using holds now (after prelude.lua): requests it
-- admitted, their tokens (settled, or reserved while in flight), its requests still in flight
-- and their budget reservations, and the spend of those that ended since its last report.
-- Every figure but the spend is absolute, so a report sent twice counts once; each report is
-- at most the last. KEYS: log, tok, cur, spend, res, lw.
-- ARGV: lease id, requests, tokens, in flight, reserved (nano-USD), spent (nano-USD), hold ms.
local id = ARGV[1]
local r, tk, k, b, spent, hold = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local log, tok, cur, spend, res, lw = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]

if redis.call('ZSCORE', log, id) then
  local old = tonumber(redis.call('HGET', tok, id) or '0')
  if r == 0 then
    redis.call('ZREM', log, id)
    redis.call('HDEL', tok, id)
    redis.call('HINCRBY', tok, '_total', -old)
  else
    redis.call('HSET', tok, id, tk)
    redis.call('HINCRBY', tok, '_total', tk - old)
  end
  weigh(lw, 'r', id, r)
end
if redis.call('ZSCORE', cur, id) then
  local old = tonumber(redis.call('HGET', res, id) or '0')
  if k == 0 then
    redis.call('ZREM', cur, id)
    redis.call('HDEL', res, id)
    redis.call('HINCRBY', res, '_total', -old)
  else
    redis.call('ZADD', cur, 'XX', now + hold, id)
    redis.call('HSET', res, id, b)
    redis.call('HINCRBY', res, '_total', b - old)
  end
  weigh(lw, 'k', id, k)
end
charge(spend, spent)
return 0
