-- GET /orders/user/{id}/ (default page of 50) of a random seeded user. Data: "token user_id".
dofile((debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./") .. "common.lua")

function init(args)
  rows = load_rows(args[1])
  math.randomseed(os.time() + tid)
end

function request()
  local row = rows[math.random(#rows)]
  return wrk.format("GET", "/orders/user/" .. row[2] .. "/", auth(row[1]))
end
