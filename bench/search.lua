-- wrk script: search one chat for one word of parley-bench's vocabulary (scenario search).
-- The words are those of crates/parley-bench/src/text.rs, so they match fixture and seed text.
-- Usage:
--   wrk -t1 -c16 -d10s --latency -s bench/search.lua "$B/applications/$APP/chats/1/messages/search" -H "Authorization: Bearer $TOKEN"
local syllables = {"ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "do", "fu", "gi", "ha", "je", "wu"}
local words = {}
for i = 0, 511 do
  local j = (i * 2654435761) % 4096 -- 0x9E3779B1: exact in a double
  words[#words + 1] = syllables[j % 16 + 1]
    .. syllables[math.floor(j / 16) % 16 + 1]
    .. syllables[math.floor(j / 256) % 16 + 1]
end

request = function()
  return wrk.format("GET", wrk.path .. "?q=" .. words[math.random(1, #words)] .. "&limit=10")
end
