-- wrk script: POST a chat into the application (scenario create-chat). Usage:
--   wrk -t1 -c16 -d10s --latency -s bench/create_chat.lua "$B/applications/$APP/chats" -H "Authorization: Bearer $TOKEN"
wrk.method = "POST"
