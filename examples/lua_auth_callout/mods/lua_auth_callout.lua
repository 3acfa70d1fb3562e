-- An auth subrequest per request (like nginx's auth_request). The auth service gets
-- the client's credentials and what it asked for; its status decides:
--   2xx      the request goes on, with `x-auth-user` from the service's answer
--   401, 403 that status goes back to the client (with the service's www-authenticate)
--   other    503: fail closed when the service is broken or unreachable
-- Allowed answers are cached per credentials for `cache_ttl` in std.shared, one
-- dictionary for all workers, so a burst of requests costs one call.

local function text(status, body, headers)
  headers = headers or {}
  headers["content-type"] = "text/plain; charset=utf-8"
  return std.respond(status, body, headers)
end

local function credentials(req)
  return req:header("authorization") or req:cookie("session")
end

local function ask(req)
  -- std.http.request waits for the answer; the worker serves other requests
  -- meanwhile. It raises an error when the service cannot be reached in time.
  return std.http.request{
    url = config.auth_url,
    method = "GET",
    headers = {
      ["authorization"] = req:header("authorization"),   -- nil entries are left out
      ["cookie"] = req:header("cookie"),
      ["x-original-method"] = req.method,
      ["x-original-uri"] = req.path .. (req.query and ("?" .. req.query) or ""),
      ["x-forwarded-for"] = req.client_ip,
    },
    timeout = config.timeout,
  }
end

function on_request(req, ctx)
  local creds = credentials(req)
  -- Cache by credentials and the method and path: the service may answer per path.
  local key = creds and ("auth:" .. req.method .. " " .. req.path .. " " .. creds)
  if key and #key <= 1024 and config.cache_ttl > 0 then
    local user = std.shared.get(key)
    if user then
      req:set_header("x-auth-user", user)
      ctx.user = user
      return
    end
  else
    key = nil
  end

  local ok, answer = pcall(ask, req)
  if not ok then
    log.warn("auth service failed:", tostring(answer))
    return text(503, "authentication is unavailable\n", { ["retry-after"] = "5" })
  end

  local status = answer.status
  if status == 401 or status == 403 then
    return text(status, status == 401 and "please sign in\n" or "forbidden\n", {
      ["www-authenticate"] = answer.headers["www-authenticate"],
    })
  end
  if status < 200 or status > 299 then
    log.warn("auth service answered", status)
    return text(503, "authentication is unavailable\n")
  end

  local user = answer.headers["x-auth-user"] or ""
  req:set_header("x-auth-user", user)   -- replaces anything the client sent
  ctx.user = user
  if key then
    std.shared.set(key, user, config.cache_ttl)
  end
end
