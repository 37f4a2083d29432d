-- A request ended. KEYS: per subject, the tokens HASH then the in-flight ZSET.
-- ARGV: id, tokens used (-1: not reported, keep the reservation).
-- Frees its place in flight and replaces its reserved tokens with what it used, in one call.
local id, tokens = ARGV[1], tonumber(ARGV[2])
for i = 1, #KEYS, 2 do
  local tok, cur = KEYS[i], KEYS[i + 1]
  redis.call('ZREM', cur, id)
  if tokens >= 0 then
    local old = redis.call('HGET', tok, id)
    if old then
      redis.call('HSET', tok, id, tokens)
      redis.call('HINCRBY', tok, '_total', tokens - tonumber(old))
    end
  end
end
return 0
