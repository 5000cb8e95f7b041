-- wrk script: unique single-row inserts into Kimberlite (POST /v1/execute).
-- Each wrk thread gets its own id (set in setup), so keys never collide.
local counter = 0
local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("thread_id", #threads)
end

request = function()
  counter = counter + 1
  local body = string.format(
    '{"statements":[{"sql":"INSERT INTO bench(k, v) VALUES (?, ?)","params":["t%d-%d","value-%d"]}]}',
    thread_id, counter, counter)
  return wrk.format("POST", "/v1/execute", {["Content-Type"] = "application/json"}, body)
end
