-- wrk script: GET a random message 1..$MESSAGES of one chat (scenario get-message). Usage:
--   MESSAGES=6000 wrk -t1 -c16 -d10s --latency -s bench/get_message.lua "$B/applications/$APP/chats/1/messages" -H "Authorization: Bearer $TOKEN"
local messages = tonumber(os.getenv("MESSAGES") or "6000")

request = function()
  return wrk.format("GET", wrk.path .. "/" .. math.random(1, messages))
end
