-- A sticky A/B split. The group comes from `x-ab-group` (to test a group on purpose),
-- else from the cookie, else it is drawn for a new client, who then gets the cookie.
-- The request goes to the group's upstream with std.proxy.forward, which waits for
-- the upstream's response head and returns it as an object this hook may change.

local UPSTREAM = { a = config.a_upstream, b = config.b_upstream }

local function draw()
  -- math.random is seeded per worker VM; good enough to split traffic.
  if math.random(100) <= config.b_percent then
    return "b"
  end
  return "a"
end

function on_request(req, ctx)
  -- A header naming no group (a typo, `A`) falls back to the cookie, not to a new draw.
  local group = req:header("x-ab-group")
  if UPSTREAM[group] == nil then
    group = req:cookie(config.cookie)
  end
  local new = UPSTREAM[group] == nil
  if new then
    group = draw()
  end
  ctx.ab_group = group                    -- for log lines and other modules

  req:set_header("x-ab-group", group)     -- the upstream sees the group too
  -- A forward that fails (the group's servers are down, or slower than the timeout)
  -- raises an error; uncaught, it would end the request with 500.
  local ok, resp = pcall(std.proxy.forward, { upstream = UPSTREAM[group], timeout = "10s" })
  if not ok then
    ctx.ab_error = resp
    return std.respond(502, "bad gateway\n")
  end

  resp:set_header("x-ab-group", group)
  resp:set_header("x-served-by", req.upstream)   -- after a forward: where it went
  if new then
    resp:add_header("set-cookie", string.format("%s=%s; Path=/; Max-Age=%d; SameSite=Lax",
      config.cookie, group, config.cookie_days * 86400))
  end
  return resp
end

function on_log(req, resp, ctx)
  -- The log phase is read-only; it may still read everything.
  if resp.status >= 500 then
    -- (`req.upstream` here is the set whose response the client got: after a failed
    -- forward this hook answered itself, the route's, so the group's set is named.)
    log.warn("group", ctx.ab_group, "got", resp.status, "from", UPSTREAM[ctx.ab_group], ctx.ab_error)
  end
end
