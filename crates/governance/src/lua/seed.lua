-- Seed a subject's spend (KEYS[1], the spend HASH) from the ledger, once: ARGV total, day's
-- spend, day number, month's spend, month number (nano-USD). Another instance that seeded
-- first wins; the numbers are the same ledger's.
if redis.call('HEXISTS', KEYS[1], 't') == 1 then
  return 0
end
redis.call('HSET', KEYS[1], 't', ARGV[1], 'd', ARGV[2], 'dk', ARGV[3], 'm', ARGV[4], 'mk', ARGV[5])
return 1
