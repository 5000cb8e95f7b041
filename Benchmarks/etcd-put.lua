-- wrk script: unique puts to etcd's JSON gateway (POST /v3/kv/put). Keys and
-- values are made of base64-alphabet characters in multiples of 4, so they
-- are valid base64 without encoding.
local counter = 0

request = function()
  counter = counter + 1
  local key = string.format("%04d%016d", math.random(0, 9999), counter)
  local body = string.format('{"key":"%s","value":"dmFsdWUtMDAw"}', key)
  return wrk.format("POST", "/v3/kv/put", {["Content-Type"] = "application/json"}, body)
end
