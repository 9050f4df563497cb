-- wrk script: POST messages into a random chat of 1..$CHATS (scenario create-message-spread).
-- Usage (the URL names the application's chats):
--   CHATS=1000 wrk -t1 -c16 -d10s --latency -s bench/create_message_spread.lua "$B/applications/$APP/chats" -H "Authorization: Bearer $TOKEN"
local chats = tonumber(os.getenv("CHATS") or "1000")
local body = '{"body":"hello from wrk, a message of ordinary length"}'
-- On wrk.headers, which also holds the -H headers: a table passed to wrk.format replaces them.
wrk.headers["Content-Type"] = "application/json"

request = function()
  local path = wrk.path .. "/" .. math.random(1, chats) .. "/messages"
  return wrk.format("POST", path, nil, body)
end
