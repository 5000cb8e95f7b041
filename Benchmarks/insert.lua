-- wrk script: unique single-row inserts into Kimberlite (POST /v1/execute).
-- Keys are "<run>-<thread>-<counter>": the run id comes from the command
-- line (wrk ... -s insert.lua URL -- RUN [PAUSE_MS]) so runs against the same table
-- never collide, and each wrk thread gets its own id in setup.
local counter = 0
local threads = {}
local run = "0"

function setup(thread)
  table.insert(threads, thread)
  thread:set("thread_id", #threads)
end

local pause_ms = 0

function init(args)
  run = args[1] or "0"
  pause_ms = tonumber(args[2] or "0")
end

-- Optional pacing (second argument, ms between a reply and the next
-- request on a connection): a fixed, moderate write rate for latency.
function delay()
  return pause_ms
end

request = function()
  counter = counter + 1
  local body = string.format(
    '{"statements":[{"sql":"INSERT INTO bench(k, v) VALUES (?, ?)","params":["%s-%d-%d","value-%d"]}]}',
    run, thread_id, counter, counter)
  return wrk.format("POST", "/v1/execute", {["Content-Type"] = "application/json"}, body)
end
