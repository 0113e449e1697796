-- A failed-login storm from one client IP: wrong passwords for many real usernames, each
-- username tried BENCH_STORM_TRIES (6) times in a row before the next, so each one runs into
-- the lockout (5 failures) and, once the IP has 20 failures, everything should be refused
-- with 429 by the IP block. BENCH_STORM_SKIP names the legitimate user, left alone.
dofile(os.getenv("BENCH_LUA") .. "/common.lua")

local nthreads = tonumber(os.getenv("BENCH_THREADS"))
local users = tonumber(os.getenv("BENCH_USERS"))
local tries = tonumber(os.getenv("BENCH_STORM_TRIES") or "6")
local skip = os.getenv("BENCH_STORM_SKIP") or ""
local headers = { ["Content-Type"] = "application/json" }
local counter

function init(args)
   counter = 0
end

function request()
   -- thread t owns users t, t + n, t + 2n, ...; `tries` consecutive attempts per user
   local slot = math.floor(counter / tries)
   counter = counter + 1
   local username = string.format("bench%05d", 1 + ((tid - 1 + slot * nthreads) % users))
   if username == skip then username = "nobody-" .. slot end
   local body = string.format('{"username":"%s","password":"wrong-password-%d"}', username, counter)
   return wrk.format("POST", "/api/auth/login", headers, body)
end

function response(status, headers, body)
   count(status)
end
