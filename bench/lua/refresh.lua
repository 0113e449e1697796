-- POST /api/auth/refresh with rotating refresh tokens. BENCH_REFRESH_TOKENS holds one unused
-- refresh token per line (each from its own login); each thread keeps a pool of its share.
-- A request takes a token out of the pool, and the response puts the new refresh token of
-- that session back, so every token is presented exactly once and each session's chain of
-- tokens continues as long as the run. (wrk does not tie a response to its request, but it
-- does not need to: any fresh token in the pool is as good as any other.)
dofile(os.getenv("BENCH_LUA") .. "/common.lua")

local headers = { ["Content-Type"] = "application/json" }
local pool

function init(args)
   pool = share(read_lines(os.getenv("BENCH_REFRESH_TOKENS")), tid, tonumber(os.getenv("BENCH_THREADS")))
end

function request()
   -- An empty pool means chains broke (failed refreshes): send a token that is sure to fail,
   -- so the loss shows up as errors instead of silently idling connections.
   local token = table.remove(pool) or "exhausted"
   return wrk.format("POST", "/api/auth/refresh", headers, '{"refresh_token":"' .. token .. '"}')
end

function response(status, headers, body)
   count(status)
   if status == 200 then
      local token = body:match('"refresh_token":"([^"]+)"')
      if token then pool[#pool + 1] = token end
   end
end
