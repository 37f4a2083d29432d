-- Replace a request's reserved tokens with what it used. KEYS: per subject, the tokens HASH.
-- ARGV: id, tokens. An entry already out of the minute is left alone.
local id, tokens = ARGV[1], tonumber(ARGV[2])
for _, tok in ipairs(KEYS) do
  local old = redis.call('HGET', tok, id)
  if old then
    redis.call('HSET', tok, id, tokens)
    redis.call('HINCRBY', tok, '_total', tokens - tonumber(old))
  end
end
return 0
