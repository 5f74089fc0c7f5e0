-- GET /orders/user/{id}/ (default page of 50) of a random seeded user. Data: "token user_id".
dofile((debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./") .. "common.lua")

function request()
  local row = random_row()
  return wrk.format("GET", "/orders/user/" .. row[2] .. "/", auth(row[1]))
end
