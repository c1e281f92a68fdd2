#!/usr/bin/env bash
# redis-drop-prefix.sh PREFIX [HOST [PORT]]: deletes every key whose name starts with PREFIX on
# that Redis (default 127.0.0.1:6379), so that a test run leaves nothing behind on a shared
# server (the cache's generation and lease registry have no TTL). Server-side, in one Lua SCAN
# loop, since cached search texts put spaces and control characters in key names. Prints how
# many keys it deleted; does nothing without redis-cli, and never fails (it runs in cleanups).
prefix=${1:?usage: redis-drop-prefix.sh PREFIX [HOST [PORT]]}
host=${2:-127.0.0.1}
port=${3:-6379}
command -v redis-cli >/dev/null || exit 0
drop_keys='local cursor, n = "0", 0
repeat
  local page = redis.call("SCAN", cursor, "MATCH", ARGV[1], "COUNT", 1000)
  cursor = page[1]
  for _, key in ipairs(page[2]) do redis.call("DEL", key); n = n + 1 end
until cursor == "0"
return n'
redis-cli -h "$host" -p "$port" eval "$drop_keys" 0 "$prefix*" 2>/dev/null || true
