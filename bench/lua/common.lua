-- Shared by the bench scripts: each line of the data file (first script argument) is split on
-- spaces; every thread reads the file once and gets its own id (`tid`, 0-based).
local threads = 0

function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end

function load_rows(path)
  local rows = {}
  for line in io.lines(path) do
    local fields = {}
    for field in line:gmatch("%S+") do fields[#fields + 1] = field end
    if #fields > 0 then rows[#rows + 1] = fields end
  end
  assert(#rows > 0, "no rows in " .. path)
  return rows
end

function auth(token)
  return { ["Authorization"] = "Bearer " .. token, ["Content-Type"] = "application/json" }
end

-- The default `init`: the rows, and a random stream per thread. A script may define its own.
function init(args)
  rows = load_rows(args[1])
  math.randomseed(os.time() + tid)
end

function random_row()
  return rows[math.random(#rows)]
end
