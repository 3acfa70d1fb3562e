-- Refuses requests under `config.prefix` unless they carry a bearer token shaped like a
-- JWT (header.payload.signature, each base64url) whose payload has an `exp` claim in
-- the future. The `sub` claim is passed upstream as `x-token-sub`.
--
-- This does NOT check the signature: the sandbox has no HMAC or RSA. Use it to turn
-- away junk and expired tokens early; verify signatures in an auth service
-- (examples/lua_auth_callout) or in the upstream.

-- `require` loads mods/lib/NAME.lua, once per worker VM.
local b64 = require("base64url")

-- A 401 as a response object; returning it from on_request answers the request.
local function deny(reason, challenge)
  return std.respond(401, reason .. "\n", {
    ["content-type"] = "text/plain; charset=utf-8",
    ["www-authenticate"] = challenge or 'Bearer error="invalid_token"',
  })
end

-- Claims from the payload's JSON text: enough for flat numeric and simple string
-- claims (there is no JSON parser in the sandbox). `name` is a plain word.
local function number_claim(json, name)
  return tonumber(json:match('"' .. name .. '"%s*:%s*(%d+)'))
end

local function string_claim(json, name)
  return json:match('"' .. name .. '"%s*:%s*"([^"\\]*)"')
end

function on_request(req, ctx)
  if req.path:sub(1, #config.prefix) ~= config.prefix then
    return -- not ours: the pipeline goes on
  end

  local auth = req:header("authorization")
  if auth == nil then
    return deny("missing bearer token", "Bearer")
  end
  local token = auth:match("^[Bb]earer%s+(%S+)$")
  if token == nil or #token > config.max_token then
    return deny("expected `authorization: Bearer <token>`")
  end

  local head64, body64 = token:match("^([%w_-]+)%.([%w_-]+)%.[%w_-]+$")
  if head64 == nil then
    return deny("the token is not three base64url parts")
  end
  local head = b64.decode(head64)
  local payload = b64.decode(body64)
  if head == nil or payload == nil or not head:find("^%s*{") or not payload:find("^%s*{") then
    return deny("the token's header or payload is not base64url JSON")
  end
  if string_claim(head, "alg") == "none" then
    return deny("unsigned tokens are refused")
  end

  local exp = number_claim(payload, "exp")
  if exp == nil then
    return deny("the token has no exp claim")
  end
  if exp + config.leeway < os.time() then
    return deny("the token expired at " .. os.date("!%Y-%m-%dT%H:%M:%SZ", exp))
  end

  local sub = string_claim(payload, "sub")
  -- The claim is the client's text: one with control characters (a CR, a NUL) is not
  -- a header value, and set_header would fail the request with 500.
  if sub ~= nil and sub:find("[%c\127]") then
    return deny("the token's sub claim has control characters")
  end
  req:set_header("x-token-sub", sub)   -- nil (no sub claim) removes a forged one
  ctx.token_sub = sub                  -- for later modules: pcmod reads $ctx.token_sub
  log.debug("token ok for", sub, "expires", exp)
end
