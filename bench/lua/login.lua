-- POST /api/auth/login with the right password, each thread walking its own slice of the
-- seeded users (user number tid, tid + n, tid + 2n, ... of BENCH_USERS), so no username
-- repeats until every user has logged in once. With BENCH_HARVEST set, every successful
-- answer is appended to BENCH_HARVEST/login-<tid>.tsv as
--   user_id <TAB> username <TAB> lab_id <TAB> role <TAB> access_token <TAB> refresh_token
-- (lab_id/role of the user's first lab, empty when none); bench/run builds the token lists of
-- the later scenarios from these files, so every session opened here stays alive.
dofile(os.getenv("BENCH_LUA") .. "/common.lua")

local password = os.getenv("BENCH_PASSWORD")
local users = tonumber(os.getenv("BENCH_USERS"))
local first = tonumber(os.getenv("BENCH_FIRST_USER") or "1")
local nthreads = tonumber(os.getenv("BENCH_THREADS"))
local harvest_dir = os.getenv("BENCH_HARVEST")
local headers = { ["Content-Type"] = "application/json" }
local next_user, out

function init(args)
   next_user = tid - 1
   if harvest_dir and harvest_dir ~= "" then
      out = assert(io.open(harvest_dir .. "/login-" .. tid .. ".tsv", "a"))
      out:setvbuf("line")
   end
end

function request()
   local number = first + (next_user % users)
   next_user = next_user + nthreads
   local body = string.format('{"username":"bench%05d","password":%s}', number, json_string(password))
   return wrk.format("POST", "/api/auth/login", headers, body)
end

function response(status, headers, body)
   count(status)
   if status == 200 and out then
      local access = body:match('"access_token":"([^"]+)"')
      local refresh = body:match('"refresh_token":"([^"]+)"')
      local user = body:match('"user":(%b{})') or ""
      local user_id = user:match('"id":(%d+)') or ""
      local username = user:match('"username":"([^"]+)"') or ""
      local labs = user:match('"labs":(%b[])') or "[]"
      local lab_id = labs:match('"id":(%d+)') or ""
      local role = labs:match('"role":"([^"]+)"') or ""
      out:write(table.concat({ user_id, username, lab_id, role, access, refresh }, "\t"), "\n")
   end
end
