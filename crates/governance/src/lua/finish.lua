-- A request ended (after prelude.lua). KEYS: per subject, the tokens HASH, the in-flight ZSET,
-- the spend HASH and the budget reservations HASH.
-- ARGV: id, tokens used (-1: not reported, keep the reservation), cost in nano-USD (-1: not
-- reported, charge nothing).
-- Frees its place in flight and its budget reservation, replaces its reserved tokens with what
-- it used and adds its cost to the day, month and total, in one call.
local id, tokens, cost = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
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
  charge(spend, cost)
end
return 0
