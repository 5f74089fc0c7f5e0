-- PATCH /orders/{id}/ to the status given as second argument. Data: "token order_id" lines.
-- Each thread walks its own share of the orders in turn, so every request changes a different
-- order (a real transition) until the share is used up; after that it wraps around and the
-- requests become 200 no-ops (the bench seeds enough orders that this does not happen).
dofile((debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./") .. "common.lua")

function init(args)
  rows = load_rows(args[1])
  body = '{"status": "' .. args[2] .. '"}'
  threads_total = tonumber(args[3] or "2")
  next_index = tid
end

function request()
  local row = rows[(next_index % #rows) + 1]
  next_index = next_index + threads_total
  return wrk.format("PATCH", "/orders/" .. row[2] .. "/", auth(row[1]), body)
end
