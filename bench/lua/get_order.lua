-- GET /orders/{id}/ of a random seeded order, as its owner. Data: "token order_id" lines.
dofile((debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./") .. "common.lua")

function request()
  local row = random_row()
  return wrk.format("GET", "/orders/" .. row[2] .. "/", auth(row[1]))
end
