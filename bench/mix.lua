-- wrk script: 90% reads / 10% writes (scenario mix): 45% GET a message of chat 1, 45% GET page
-- 1 of chat 1, 10% POST a message into a random chat of 1..$CHATS. Usage (the URL names the
-- application's chats):
--   MESSAGES=6000 CHATS=1000 wrk -t1 -c16 -d10s --latency -s bench/mix.lua "$B/applications/$APP/chats" -H "Authorization: Bearer $TOKEN"
local messages = tonumber(os.getenv("MESSAGES") or "6000")
local chats = tonumber(os.getenv("CHATS") or "1000")
local body = '{"body":"hello from wrk, a message of ordinary length"}'
-- On wrk.headers, which also holds the -H headers: a table passed to wrk.format replaces them.
wrk.headers["Content-Type"] = "application/json"

request = function()
  local roll = math.random(0, 99)
  if roll < 45 then
    return wrk.format("GET", wrk.path .. "/1/messages/" .. math.random(1, messages))
  elseif roll < 90 then
    return wrk.format("GET", wrk.path .. "/1/messages?page=1&limit=10")
  end
  local path = wrk.path .. "/" .. math.random(1, chats) .. "/messages"
  return wrk.format("POST", path, nil, body)
end
