-- wrk script: GET 10 messages with before= in the oldest 1% of a chat of $MESSAGES messages
-- (scenario deep-list-before, keyset pagination). Usage:
--   MESSAGES=6000 wrk -t1 -c16 -d10s --latency -s bench/deep_list_before.lua "$B/applications/$APP/chats/1/messages" -H "Authorization: Bearer $TOKEN"
local messages = tonumber(os.getenv("MESSAGES") or "6000")
local deep = math.max(1, math.floor(messages / 100))

request = function()
  return wrk.format("GET", wrk.path .. "?before=" .. math.random(11, deep + 11) .. "&limit=10")
end
