-- Authenticated GETs: BENCH_REQUESTS is a file of "access_token <TAB> path" lines; each thread
-- takes its share and cycles through it, so every request carries a different user's token.
dofile(os.getenv("BENCH_LUA") .. "/common.lua")

local requests, position

function init(args)
   local lines = share(read_lines(os.getenv("BENCH_REQUESTS")), tid, tonumber(os.getenv("BENCH_THREADS")))
   requests, position = {}, 0
   for i, line in ipairs(lines) do
      local fields = split_tabs(line)
      requests[i] = wrk.format("GET", fields[2], { Authorization = "Bearer " .. fields[1] })
   end
   assert(#requests > 0, "no requests for thread " .. tid)
end

function request()
   position = position % #requests + 1
   return requests[position]
end

function response(status, headers, body)
   count(status)
end
