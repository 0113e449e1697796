-- Shared by every bench script: thread numbering, per-status counts, and a one-line JSON
-- summary ("RESULT {...}") that bench/run parses. wrk runs one Lua state per thread plus
-- the main one; setup() and done() run in the main state, request()/response() per thread.

local threads = {}

function setup(thread)
   table.insert(threads, thread)
   thread:set("tid", #threads)            -- 1-based thread number, seen by init() as a global
end

statuses = {}                              -- per thread: HTTP status -> count

function count(status)
   statuses[status] = (statuses[status] or 0) + 1
end

-- Lines of a file, or an error naming it.
function read_lines(path)
   local lines = {}
   local file = assert(io.open(path, "r"), "cannot open " .. tostring(path))
   for line in file:lines() do
      if line ~= "" then lines[#lines + 1] = line end
   end
   file:close()
   return lines
end

-- The share of `items` that thread `tid` of `n` owns (every n-th item), so threads never
-- use the same single-use token.
function share(items, tid, n)
   local mine = {}
   for i = tid, #items, n do mine[#mine + 1] = items[i] end
   return mine
end

function split_tabs(line)
   local fields = {}
   for field in (line .. "\t"):gmatch("([^\t]*)\t") do fields[#fields + 1] = field end
   return fields
end

function json_string(text)
   return '"' .. text:gsub('[%c"\\]', function(c) return string.format("\\u%04x", c:byte()) end) .. '"'
end

function done(summary, latency, requests)
   local totals = {}
   for _, thread in ipairs(threads) do
      local counts = thread:get("statuses") or {}
      for status, n in pairs(counts) do totals[status] = (totals[status] or 0) + n end
   end
   local parts = {}
   for status, n in pairs(totals) do parts[#parts + 1] = string.format('"%d":%d', status, n) end
   local seconds = summary.duration / 1e6
   local socket_errors = summary.errors.connect + summary.errors.read
      + summary.errors.write + summary.errors.timeout
   io.write(string.format(
      'RESULT {"requests":%d,"seconds":%.3f,"rps":%.1f,"p50_ms":%.3f,"p95_ms":%.3f,' ..
      '"p99_ms":%.3f,"max_ms":%.3f,"socket_errors":%d,"timeouts":%d,"status":{%s}}\n',
      summary.requests, seconds, summary.requests / seconds,
      latency:percentile(50) / 1000, latency:percentile(95) / 1000,
      latency:percentile(99) / 1000, latency.max / 1000,
      socket_errors, summary.errors.timeout, table.concat(parts, ",")))
end
