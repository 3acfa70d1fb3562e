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
  local group = req:header("x-ab-group") or req:cookie(config.cookie)
  local new = UPSTREAM[group] == nil
  if new then
    group = draw()
  end

  req:set_header("x-ab-group", group)     -- the upstream sees the group too
  local resp = std.proxy.forward{ upstream = UPSTREAM[group], timeout = "10s" }

  resp:set_header("x-ab-group", group)
  resp:set_header("x-served-by", req.upstream)   -- after a forward: where it went
  if new then
    resp:add_header("set-cookie", string.format("%s=%s; Path=/; Max-Age=%d; SameSite=Lax",
      config.cookie, group, config.cookie_days * 86400))
  end
  ctx.ab_group = group                    -- for log lines and other modules
  return resp
end

function on_log(req, resp, ctx)
  -- The log phase is read-only; it may still read everything.
  if resp.status >= 500 then
    log.warn("group", ctx.ab_group, "got", resp.status, "from", req.upstream)
  end
end
