-- Replaces every `config.find` with `config.replace` in the bodies of text-like
-- responses. Reading a body means holding all of it in memory: a response that
-- announces more than `config.max_bytes` (content-length) streams through untouched.
-- One that announces no length (chunked, or the built-in echo) is read anyway, up to
-- server.limits.max_body; a larger one would fail its request with 500.

local TEXT_TYPES = { "^text/", "^application/json", "^application/xml", "^application/javascript" }

local function is_text(content_type)
  if content_type == nil then
    return false
  end
  content_type = content_type:lower()
  for _, pattern in ipairs(TEXT_TYPES) do
    if content_type:find(pattern) then
      return true
    end
  end
  return false
end

-- `find` is plain text, not a Lua pattern: escape the magic characters once, at load.
local FIND = config.find:gsub("[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0")
local REPLACE = config.replace:gsub("%%", "%%%%")

function on_response(req, resp, ctx)
  local length = tonumber(resp:header("content-length"))
  if resp.status ~= 200
    or not is_text(resp:header("content-type"))
    or resp:header("content-encoding") ~= nil     -- compressed: the text is not visible
    or (length ~= nil and length > config.max_bytes) then
    return
  end
  if req.method == "HEAD" then
    -- No body to rewrite, but a GET's rewritten body may have another length: say
    -- none rather than the upstream's.
    resp:remove_header("content-length")
    return
  end

  local body = resp:body()        -- waits for the whole body; the worker serves others
  local new, count = body:gsub(FIND, REPLACE)
  if count > 0 then
    resp:set_body(new)            -- content-length follows the new body
  end
  resp:set_header("x-rewritten", count)
end
