-- wrk script: POST a message into one chat. Usage:
--   wrk -t2 -c64 -d20s -s bench/create_message.lua "$B/applications/$APP/chats/1/messages" -H "Authorization: Bearer $TOKEN"
wrk.method = "POST"
wrk.body = '{"body":"hello from wrk, a message of ordinary length"}'
wrk.headers["Content-Type"] = "application/json"
