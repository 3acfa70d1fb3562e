-- The sandbox prelude: runs once per VM, with the VM's own globals, before any
-- script. It keeps private references to the raw functions it wraps and returns the
-- constructors the Rust side uses. Nothing it returns is reachable by scripts.
--
-- host (from Rust): spent() -> bool, runner() -> id, mark() -> id (a runner wrote a
-- global), read_lib(name) -> source, path, charge(n) (n instructions' worth of work
-- done in C; raises the budget error once it is spent), step (instructions between
-- two count-hook ticks), caught(e) -> the plain message of an error a Rust function
-- raised (nil for any other value).
local host = ...

local type, error, next, tostring, rawget, rawset, setmetatable, getmetatable, pcall, xpcall, load, select =
    type, error, next, tostring, rawget, rawset, setmetatable, getmetatable, pcall, xpcall, load, select
local yield = coroutine.yield
local spent, runner, mark, read_lib = host.spent, host.runner, host.mark, host.read_lib
local charge, STEP, caught = host.charge, host.step, host.caught

-- What must not exist at all.
string.dump = nil

-- C functions that loop in C as many times as the script asks: no count-hook tick
-- fires inside one C call, so a huge count would hold the worker whatever the
-- budget. Those that allocate as they go are stopped by the memory limit; these do
-- not allocate. They are replaced in the real library tables (the string metatable's
-- `__index` is the real `string`), by versions the budget reaches.
local str_rep, str_match, str_gsub = string.rep, string.match, string.gsub
local tointeger, MAXINT = math.tointeger, math.maxinteger
local MAX_EMPTY_REP = 1 << 24

-- An error a wrapped C function raised (called with pcall, so it has no position),
-- raised again at the position of the script's call (level 3: the caller of the
-- wrapper, which tail-called `checked` or calls this itself) and naming the public
-- function. A spent budget and a memory error pass as they are; so does an error
-- that already has a position (raised by a Lua function the C function called: a
-- `table.sort` comparator, a `__index`).
local function lib_error(name, e)
  if spent() or type(e) ~= "string" or e == "not enough memory" then error(e, 0) end
  if str_match(e, "^[^\n]-:%d+: ") then error(e, 0) end
  e = str_gsub(e, "^bad argument (#%d+) to '[^']*'", "bad argument %1 to '" .. name .. "'")
  error(e, 3)
end
local function checked(name, ok, ...)
  if ok then return ... end
  lib_error(name, (...))
end

-- C functions whose work grows with their input, and which do not allocate as they
-- go (or not in proportion): one call on a large string takes milliseconds with no
-- count-hook tick. They are charged to the budget (`charge`, like the Rust pattern
-- matcher's steps): one instruction per 64 bytes read or made, one per element
-- (values returned, table entries joined), n·log2(n) for `table.sort`. Inputs under
-- these sizes cost only the call (the wrapper's own instructions are counted).
local BYTES_MIN, ELEMENTS_MIN = 1024, 256
local function charge_bytes(n)
  if n >= BYTES_MIN then charge(n // 64) end
end
local function charge_elements(n)
  if n >= ELEMENTS_MIN then charge(n) end
end
-- `checked`, then charging the string result's length.
local function checked_string(name, ok, r, ...)
  if not ok then lib_error(name, r) end
  if type(r) == "string" then charge_bytes(#r) end
  return r, ...
end
-- `checked`, then charging the number of values returned.
local function checked_count(name, ok, ...)
  if not ok then lib_error(name, (...)) end
  charge_elements(select("#", ...))
  return ...
end
local function input_bytes(s)
  if type(s) == "string" then charge_bytes(#s) end
end

string.rep = function(s, n, sep)
  -- An empty string made `n` times copies nothing: the memory limit never stops it.
  local count = tonumber(n)
  if count and count > MAX_EMPTY_REP and s == "" and (sep == nil or sep == "") then
    return ""
  end
  if count and count > 0 then
    local len = (type(s) == "number" and #tostring(s) or type(s) == "string" and #s or 0)
      + (type(sep) == "string" and #sep or 0)
    local total = len * count
    -- Lua refuses a result over 2^31 bytes with its own error.
    if total < 0x7fffffff then charge_bytes(total // 1) end
  end
  return checked("rep", pcall(str_rep, s, n, sep))
end
do
  local byte, upper, lower, reverse, sub, format, char =
    string.byte, string.upper, string.lower, string.reverse, string.sub, string.format, string.char
  -- The most used ones without varargs, which cost more than the call.
  string.byte = function(s, i, j)
    if j ~= nil then return checked_count("byte", pcall(byte, s, i, j)) end
    local ok, r = pcall(byte, s, i)
    if not ok then lib_error("byte", r) end
    if r == nil then return end
    return r
  end
  string.upper = function(s)
    if type(s) == "string" and #s >= BYTES_MIN then charge(#s // 64) end
    local ok, r = pcall(upper, s)
    if not ok then lib_error("upper", r) end
    return r
  end
  string.lower = function(s)
    if type(s) == "string" and #s >= BYTES_MIN then charge(#s // 64) end
    local ok, r = pcall(lower, s)
    if not ok then lib_error("lower", r) end
    return r
  end
  string.reverse = function(s)
    input_bytes(s)
    return checked("reverse", pcall(reverse, s))
  end
  string.sub = function(s, i, j)
    local ok, r = pcall(sub, s, i, j)
    if not ok then lib_error("sub", r) end
    if #r >= BYTES_MIN then charge(#r // 64) end
    return r
  end
  string.format = function(...) return checked_string("format", pcall(format, ...)) end
  string.char = function(...) return checked_string("char", pcall(char, ...)) end

  local len, codepoint, offset, uchar = utf8.len, utf8.codepoint, utf8.offset, utf8.char
  utf8.len = function(s, i, j, lax)
    input_bytes(s)
    return checked("len", pcall(len, s, i, j, lax))
  end
  utf8.codepoint = function(s, i, j, lax)
    return checked_count("codepoint", pcall(codepoint, s, i, j, lax))
  end
  utf8.offset = function(s, n, i)
    input_bytes(s)
    return checked("offset", pcall(offset, s, n, i))
  end
  utf8.char = function(...) return checked_string("char", pcall(uchar, ...)) end

  local concat, sort, unpack, log, ceil = table.concat, table.sort, table.unpack, math.log, math.ceil
  table.concat = function(t, sep, i, j)
    local ok, r = pcall(concat, t, sep, i, j)
    if not ok then lib_error("concat", r) end
    charge_bytes(#r)
    charge_elements((tointeger(j) or #t) - (tointeger(i) or 1) + 1)
    return r
  end
  table.sort = function(t, comp)
    if type(t) == "table" then
      local n = #t
      if type(n) == "number" and n >= 64 then charge_elements(ceil(n * log(n, 2))) end
    end
    return checked("sort", pcall(sort, t, comp))
  end
  table.unpack = function(...) return checked_count("unpack", pcall(unpack, ...)) end
end

-- Coroutines. A hook runs in a coroutine of the driver's pool ("runner"), reused by
-- later hooks of any module: only the driver may resume or close one, or a request
-- that kept it (`coroutine.running()`) could resume another request's hook with
-- forged results, or kill it. And each new coroutine starts with a fresh count-hook
-- count, so up to `STEP` - 1 instructions of each are never charged: making one costs
-- `STEP` instructions.
local runner_threads = setmetatable({}, { __mode = "k" })
do
  local create, wrap, resume, close = coroutine.create, coroutine.wrap, coroutine.resume, coroutine.close
  local function check_thread(co, fname)
    if runner_threads[co] then error("cannot " .. fname .. " a hook's own coroutine", 3) end
    if type(co) ~= "thread" then
      error("bad argument #1 to '" .. fname .. "' (coroutine expected, got " .. type(co) .. ")", 3)
    end
  end
  local function check_function(f, fname)
    if type(f) ~= "function" then
      error("bad argument #1 to '" .. fname .. "' (function expected, got " .. type(f) .. ")", 3)
    end
    charge(STEP)
  end
  coroutine.create = function(f)
    check_function(f, "create")
    return create(f)
  end
  coroutine.wrap = function(f)
    check_function(f, "wrap")
    return wrap(f)
  end
  coroutine.resume = function(co, ...)
    check_thread(co, "resume")
    return resume(co, ...)
  end
  coroutine.close = function(co)
    check_thread(co, "close")
    return checked("close", pcall(close, co))
  end
end
-- table.insert, table.remove and table.move in Lua: the budget counts their loops.
local function check_table(t, fname)
  if type(t) ~= "table" then
    error("bad argument #1 to '" .. fname .. "' (table expected, got " .. type(t) .. ")", 3)
  end
end
local function int_arg(v, i, fname)
  local n = tointeger(v)
  if n == nil then
    error("bad argument #" .. i .. " to '" .. fname .. "' (number has no integer representation)", 3)
  end
  return n
end
table.insert = function(t, ...)
  check_table(t, "insert")
  local e = #t + 1
  local nargs = select("#", ...)
  if nargs == 1 then
    t[e] = ...
    return
  end
  if nargs ~= 2 then error("wrong number of arguments to 'insert'", 2) end
  local pos, v = ...
  pos = int_arg(pos, 2, "insert")
  if pos < 1 or pos > e then error("bad argument #2 to 'insert' (position out of bounds)", 2) end
  for i = e, pos + 1, -1 do t[i] = t[i - 1] end
  t[pos] = v
end
table.remove = function(t, ...)
  check_table(t, "remove")
  local size = #t
  local pos = size
  if select("#", ...) > 0 then
    pos = int_arg((...), 2, "remove")
    if pos ~= size and (pos < 1 or pos > size + 1) then
      error("bad argument #2 to 'remove' (position out of bounds)", 2)
    end
  end
  local v = t[pos]
  while pos < size do
    t[pos] = t[pos + 1]
    pos = pos + 1
  end
  t[pos] = nil
  return v
end
table.move = function(a1, f, e, t, a2)
  check_table(a1, "move")
  f, e, t = int_arg(f, 2, "move"), int_arg(e, 3, "move"), int_arg(t, 4, "move")
  if a2 == nil then a2 = a1 else check_table(a2, "move") end
  if e >= f then
    if not (f > 0 or e < MAXINT + f) then
      error("bad argument #3 to 'move' (too many elements to move)", 2)
    end
    local n = e - f + 1
    if t > MAXINT - n + 1 then
      error("bad argument #4 to 'move' (destination wrap around)", 2)
    end
    if t > e or t <= f or a1 ~= a2 then
      for i = 0, n - 1 do a2[t + i] = a1[f + i] end
    else
      for i = n - 1, 0, -1 do a2[t + i] = a1[f + i] end
    end
  end
  return a2
end
-- Pattern matching backtracks inside one C call: `("a"):rep(3000):find(("a*"):rep(12)
-- .. "b")` would run for hours. A call whose worst case is small (by the subject's
-- length and the pattern's quantifiers) goes to Lua's C function; the others to the
-- Rust port of the same matcher (host.find ...), which charges its steps to the
-- budget as it goes.
local str_find, str_gmatch = string.find, string.gmatch
local r_find, r_match, r_gmatch, r_gsub = host.find, host.match, host.gmatch, host.gsub
local CHEAP = 1000000 -- worst-case steps left to the C functions
local MAXLEN = {}     -- [q]: the longest subject whose n^(q+1) stays under CHEAP
for q = 1, 40 do MAXLEN[q] = math.floor(CHEAP ^ (1 / (q + 1))) end
local quant, quant_n = {}, 0
local function cheap(s, p, plain)
  if type(s) ~= "string" or type(p) ~= "string" then
    return true -- the C function raises the argument error
  end
  local n, m = #s, #p
  if plain then return n * m <= CHEAP end
  local q = quant[p]
  if q == nil then
    local _, k = str_gsub(p, "[%*%+%-%?]", "")
    local _, b = str_gsub(p, "%%b", "")
    q = k + b
    if quant_n >= 4096 then quant, quant_n = {}, 0 end
    quant[p], quant_n = q, quant_n + 1
  end
  if q == 0 then return n * m <= CHEAP end
  if n > (MAXLEN[q] or 1) then return false end
  -- m * n^(q+1): a long pattern costs in proportion too.
  local cost = m
  for _ = 0, q do
    cost = cost * n
    if cost > CHEAP then return false end
  end
  return true
end
local function rethrow_pattern(ok, ...)
  if ok then return ... end
  local e = ...
  if spent() then error(e, 0) end
  local text = tostring(e):match("^[^\n]*") or ""
  error((str_gsub(text, "^runtime error: ", "")), 3)
end
-- (Numbers are matched as the strings they convert to, on either path.)
local function text(v)
  if type(v) == "number" then return tostring(v) end
  return v
end
string.find = function(s, p, init, plain)
  local ts, tp = text(s), text(p)
  if cheap(ts, tp, plain) then return checked("find", pcall(str_find, s, p, init, plain)) end
  return rethrow_pattern(pcall(r_find, ts, tp, init, plain))
end
string.match = function(s, p, init)
  local ts, tp = text(s), text(p)
  if cheap(ts, tp) then return checked("match", pcall(str_match, s, p, init)) end
  return rethrow_pattern(pcall(r_match, ts, tp, init))
end
string.gmatch = function(s, p, init)
  local ts, tp = text(s), text(p)
  if cheap(ts, tp) then return checked("gmatch", pcall(str_gmatch, s, p, init)) end
  local next_match = rethrow_pattern(pcall(r_gmatch, ts, tp, init))
  return function() return rethrow_pattern(pcall(next_match)) end
end
string.gsub = function(s, p, repl, n)
  local ts, tp = text(s), text(p)
  if cheap(ts, tp) then return checked_string("gsub", pcall(str_gsub, s, p, repl, n)) end
  return rethrow_pattern(pcall(r_gsub, ts, tp, repl, n))
end

local os_time, os_clock, os_date = os.time, os.clock, os.date

-- Scripts may not reach the string metatable (it is shared by every string).
getmetatable("").__metatable = false

-- A read-only view of `t` (nested tables are viewed read-only too, on access).
local views = setmetatable({}, { __mode = "k" })
local function readonly(t, name)
  local proxy = {}
  views[proxy] = true
  setmetatable(proxy, {
    __index = function(_, k)
      local v = t[k]
      if type(v) == "table" and not views[v] then
        return readonly(v, name .. "." .. tostring(k))
      end
      return v
    end,
    __newindex = function() error(name .. " is read-only", 2) end,
    __len = function() return #t end,
    -- pairs() hands out read-only views of nested tables too.
    __pairs = function()
      return function(_, k)
        local nk, nv = next(t, k)
        if type(nv) == "table" and not views[nv] then
          nv = readonly(nv, name .. "." .. tostring(nk))
        end
        return nk, nv
      end, proxy, nil
    end,
    __metatable = false,
  })
  return proxy
end

-- A library table: flat, read-only, lookups as fast as a plain table's.
local function library(t, name)
  local proxy = {}
  views[proxy] = true
  setmetatable(proxy, {
    __index = t,
    __newindex = function() error(name .. " is read-only", 2) end,
    __len = function() return #t end,
    -- An iterator over `t` that never hands `t` itself out (`next, t, nil` would).
    __pairs = function()
      return function(_, k) return next(t, k) end, proxy, nil
    end,
    __metatable = false,
  })
  return proxy
end

-- A read-only tree of library tables (`std`, `log`): every level a `library` view
-- made once, so `std.request_id.inject` is plain table lookups (no function call
-- and no new view per access, as `readonly` would make).
local function library_tree(t, name)
  local view = {}
  for k, v in next, t do
    if type(v) == "table" then v = library_tree(v, name .. "." .. tostring(k)) end
    view[k] = v
  end
  return library(view, name)
end

-- pcall and xpcall that cannot swallow a spent budget: once the hook is over its
-- budget, every error is passed on until the hook ends. An error a Rust function
-- raised (a method of `req` or `resp`: mlua's error object, whose tostring has a
-- traceback) is handed over as the plain string std functions raise,
-- "file:12: req:set_header: ...". Only a failed call pays for that.
local function plain_error(e)
  if type(e) == "userdata" then
    local text = caught(e)
    if text ~= nil then return text end
  end
  return e
end
local function rethrow(ok, ...)
  if not ok then
    if spent() then error((...), 0) end
    return false, plain_error((...))
  end
  return ok, ...
end
local function safe_pcall(f, ...)
  return rethrow(pcall(f, ...))
end
local function safe_xpcall(f, handler, ...)
  return rethrow(xpcall(f, function(e)
    if spent() then return e end
    return handler(plain_error(e))
  end, ...))
end

local envs = setmetatable({}, { __mode = "k" })
local function safe_rawset(t, k, v)
  if envs[t] then error("rawset on the global table, req or resp is not allowed", 2) end
  if views[t] then error("rawset on a read-only table is not allowed", 2) end
  return checked("rawset", pcall(rawset, t, k, v))
end
local function safe_setmetatable(t, mt)
  if type(mt) == "table" and rawget(mt, "__gc") ~= nil then
    error("__gc metamethods are not allowed", 2)
  end
  return setmetatable(t, mt)
end

local base = {
  assert = assert, error = error, ipairs = ipairs, next = next, pairs = pairs,
  pcall = safe_pcall, xpcall = safe_xpcall, rawequal = rawequal, rawget = rawget,
  rawlen = rawlen, rawset = safe_rawset, select = select,
  setmetatable = safe_setmetatable, getmetatable = getmetatable,
  tonumber = tonumber, tostring = tostring, type = type, _VERSION = _VERSION,
  string = library(string, "string"), table = library(table, "table"),
  math = library(math, "math"), utf8 = library(utf8, "utf8"),
  coroutine = library(coroutine, "coroutine"),
  os = library({ time = os_time, clock = os_clock, date = os_date }, "os"),
}

-- Every environment, so a runner's request-time globals can be dropped from all.
local all = {}

local make_require

-- A module's environment. Globals the chunk defines while it loads are the module's
-- own (shared by the requests of this worker, like module-level locals); a global set
-- while a request runs is private to that hook call and gone when it ends. `require`
-- is the module's own (`make_require`), or the one given (a library's environment
-- gets the `require` of the module that loads it).
local function new_env(config, require_fn)
  local globals = setmetatable({}, { __index = base })
  local env = {}
  local scratch = {}
  local live = 0
  local meta = { __metatable = false }
  local function slow_index(_, k)
    local s = scratch[runner()]
    if s ~= nil then
      local v = s[k]
      if v ~= nil then return v end
    end
    return globals[k]
  end
  local function request_newindex(_, k, v)
    local id = mark()
    local s = scratch[id]
    if s == nil then
      s = {}
      scratch[id] = s
      live = live + 1
      meta.__index = slow_index
    end
    s[k] = v
  end
  meta.__index = globals
  meta.__newindex = function(_, k, v) rawset(globals, k, v) end
  setmetatable(env, meta)
  envs[env] = true
  rawset(globals, "_G", env)
  rawset(globals, "config", config)
  rawset(globals, "require", require_fn or make_require())
  rawset(globals, "load", function(chunk, chunkname, _, chunkenv)
    if chunkenv == nil then chunkenv = env end
    return load(chunk, chunkname, "t", chunkenv)
  end)
  local record = {
    env = env,
    globals = globals,
    freeze = function() meta.__newindex = request_newindex end,
    release = function(id)
      if scratch[id] ~= nil then
        scratch[id] = nil
        live = live - 1
        if live == 0 then meta.__index = globals end
      end
    end,
  }
  all[#all + 1] = record
  return record
end

-- A module's `require`, with its own cache: each module gets its own instance of a
-- library (run in the module's first `require` of it), so a module that changes a
-- library's table changes only its own.
make_require = function()
  local loaded, loading = {}, {}
  local require_fn
  require_fn = function(name)
    if type(name) ~= "string" or not str_match(name, "^[%w_]+$") then
      error("require: a library name is letters, digits and _ (mods/lib/NAME.lua)", 2)
    end
    local v = loaded[name]
    if v ~= nil then return v end
    if loading[name] then error("require: '" .. name .. "' requires itself", 2) end
    local source, path = read_lib(name)
    local record = new_env(readonly({}, "config"), require_fn)
    local fn, err = load(source, "@" .. path, "t", record.env)
    if not fn then error(err, 0) end
    loading[name] = true
    local ok, result = pcall(fn)
    loading[name] = nil
    if not ok then error(result, 0) end
    record.freeze()
    if result == nil then result = true end
    loaded[name] = result
    return result
  end
  return require_fn
end

-- Errors from Rust functions reach scripts as plain strings with the caller's
-- position ("file:12: std.rate_limit: argument `key` ..."), not as error objects.
local function message_of(e)
  local text = tostring(e):match("^[^\n]*") or ""
  return (text:gsub("^runtime error: ", ""))
end
local function raise2(ok, ...)
  if ok then return ... end
  local e = ...
  if spent() then error(e, 0) end
  error(message_of(e), 2)
end
local function raise3(ok, ...)
  if ok then return ... end
  local e = ...
  if spent() then error(e, 0) end
  error(message_of(e), 3)
end
local function plain(f)
  return function(...)
    return raise2(pcall(f, ...))
  end
end

-- A stdlib function as scripts call it, made once per function and VM from generated
-- source: named arguments (`std.rate_limit{ key = k, rate = 10 }`) are unpacked into
-- signature order and record results built into a table here, in Lua, rather than
-- by the Rust side through the C API (each crossing costs far more than a bytecode).
-- Errors read like `plain`'s. `f` takes the arguments in signature order and returns
-- a record's fields in order (or the one result).
local function fast(f, fname, args, fields)
  local known = {}
  for i = 1, #args do known[args[i]] = true end
  local list = table.concat(args, ", ")
  local positional = {}
  for i = 1, #args do positional[i] = string.format("t[%q]", args[i]) end
  local vars, ret = "r", "r"
  if #fields > 0 then
    -- A record comes back as `true, field1, field2, ...` (nothing: no record).
    local vs, parts = { "p" }, {}
    for i = 1, #fields do
      vs[i + 1] = "v" .. i
      parts[i] = string.format("[%q] = v%d", fields[i], i)
    end
    vars = table.concat(vs, ", ")
    ret = "p and { " .. table.concat(parts, ", ") .. " } or nil"
  end
  local first = vars:match("^[%w]+")
  local named_call = #args > 0 and ("pcall(f, " .. table.concat(positional, ", ") .. ")") or "pcall(f)"
  local src = "local f, known, unknown, pcall, select, type, next, error, spent, message_of = ...\n"
    .. "return function(...)\n"
    .. "  local ok, " .. vars .. "\n"
    .. "  local t = ...\n"
    .. "  if select('#', ...) == 1 and type(t) == 'table' then\n"
    .. "    for k in next, t do\n"
    .. "      if not known[k] then error(unknown(k), 2) end\n"
    .. "    end\n"
    .. "    ok, " .. vars .. " = " .. named_call .. "\n"
    .. "  else\n"
    .. "    ok, " .. vars .. " = pcall(f, ...)\n"
    .. "  end\n"
    .. "  if not ok then\n"
    .. "    if spent() then error(" .. first .. ", 0) end\n"
    .. "    error(message_of(" .. first .. "), 2)\n"
    .. "  end\n"
    .. "  return " .. ret .. "\n"
    .. "end\n"
  local chunk = assert(load(src, "=" .. fname, "t"))
  local function unknown(k)
    return fname .. ": unknown argument `" .. tostring(k) .. "` (arguments: " .. list .. ")"
  end
  return chunk(f, known, unknown, pcall, select, type, next, error, spent, message_of)
end

-- Functions that wait: the Rust side starts an operation and returns it; yielding it
-- hands it to the hook driver, which resumes the hook with (true, result) or
-- (false, message).
local function finish(ok, ...)
  if not ok then error((...), 2) end
  return ...
end
local function waiting(start)
  return function(...)
    return finish(yield(raise3(pcall(start, ...))))
  end
end

return {
  new_env = new_env,
  readonly = readonly,
  library_tree = library_tree,
  waiting = waiting,
  plain = plain,
  fast = fast,
  set_base = function(k, v) base[k] = v end,
  release = function(id)
    for i = 1, #all do all[i].release(id) end
  end,
  noop = function() end,
  runner_thread = function(co) runner_threads[co] = true end,
  protect = function(t) envs[t] = true end,
}
