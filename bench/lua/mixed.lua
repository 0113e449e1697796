-- A portal-like mix, per 1000 requests: 500 GET /api/labs/{id}/access (downstream services
-- checking a member's permissions), 450 GET /api/auth/me, 48 token refreshes and 2 password
-- logins. Inputs as in get.lua (BENCH_ME_REQUESTS, BENCH_ACCESS_REQUESTS), refresh.lua
-- (BENCH_REFRESH_TOKENS) and login.lua (BENCH_PASSWORD, BENCH_USERS).
dofile(os.getenv("BENCH_LUA") .. "/common.lua")

local nthreads = tonumber(os.getenv("BENCH_THREADS"))
local password = os.getenv("BENCH_PASSWORD")
local users = tonumber(os.getenv("BENCH_USERS"))
local json = { ["Content-Type"] = "application/json" }
local me, access, pool
local counter, next_me, next_access, next_user = 0, 0, 0, 0

local function formatted(path)
   local out = {}
   for i, line in ipairs(share(read_lines(path), tid, nthreads)) do
      local fields = split_tabs(line)
      out[i] = wrk.format("GET", fields[2], { Authorization = "Bearer " .. fields[1] })
   end
   assert(#out > 0, "no requests in " .. path .. " for thread " .. tid)
   return out
end

function init(args)
   me = formatted(os.getenv("BENCH_ME_REQUESTS"))
   access = formatted(os.getenv("BENCH_ACCESS_REQUESTS"))
   pool = share(read_lines(os.getenv("BENCH_REFRESH_TOKENS")), tid, nthreads)
   next_user = tid - 1
end

function request()
   counter = counter % 1000 + 1
   if counter % 500 == 0 then
      local number = 1 + (next_user % users)
      next_user = next_user + nthreads
      local body = string.format('{"username":"bench%05d","password":%s}', number, json_string(password))
      return wrk.format("POST", "/api/auth/login", json, body)
   elseif counter % 20 == 0 then
      local token = table.remove(pool) or "exhausted"
      return wrk.format("POST", "/api/auth/refresh", json, '{"refresh_token":"' .. token .. '"}')
   elseif counter % 2 == 1 then
      next_access = next_access % #access + 1
      return access[next_access]
   else
      next_me = next_me % #me + 1
      return me[next_me]
   end
end

function response(status, headers, body)
   count(status)
   if status == 200 and body:sub(1, 40):find('"access_token"', 1, true) then
      -- a refresh or login answer: its refresh token continues a chain
      local token = body:match('"refresh_token":"([^"]+)"')
      if token then pool[#pool + 1] = token end
   end
end
