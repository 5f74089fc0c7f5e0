-- POST /orders/ with a two-item order, as a random seeded user. Data: "token" lines.
dofile((debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./") .. "common.lua")

local body = '{"items": [{"product_id": "SKU-1", "name": "Widget", "quantity": 2, "price": 9.99},'
  .. ' {"product_id": "SKU-2", "quantity": 1, "price": 120.5}], "total_price": 140.48}'

function request()
  local row = random_row()
  return wrk.format("POST", "/orders/", auth(row[1]), body)
end
