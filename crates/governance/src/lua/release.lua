-- A request ended: free its place in flight. KEYS: per subject, the in-flight ZSET. ARGV: id.
for _, cur in ipairs(KEYS) do
  redis.call('ZREM', cur, ARGV[1])
end
return 0
