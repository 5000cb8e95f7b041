-- wrk script: unique single-row inserts into Kimberlite (POST /v1/execute).
local counter = 0
local thread_id = 0
local threads = {}

function setup(thread)
  thread:set("thread_id", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  counter = 0
end

request = function()
  counter = counter + 1
  local body = string.format(
    '{"statements":[{"sql":"INSERT INTO bench(k, v) VALUES (?, ?)","params":["t%d-%d-%d","value-%d"]}]}',
    thread_id, counter, math.random(1, 1000000000), counter)
  return wrk.format("POST", "/v1/execute", {["Content-Type"] = "application/json"}, body)
end

response = function(status, headers, body)
  if status ~= 200 then
    errors = (errors or 0) + 1
  end
end
