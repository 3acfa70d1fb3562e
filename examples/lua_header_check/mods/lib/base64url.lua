-- base64url (RFC 4648, section 5) decoding, for `require("base64url")`.
-- Libraries run in the same sandbox as modules; what they return is cached per VM.

local M = {}

local ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
local VALUE = {}
for i = 1, #ALPHABET do
  VALUE[ALPHABET:byte(i)] = i - 1
end

--- Decodes `text` (padding `=` optional). Returns the bytes, or nil and a reason.
---@param text string
---@return string?, string?
function M.decode(text)
  text = text:gsub("=+$", "")
  if #text % 4 == 1 then
    return nil, "impossible length"
  end
  local out = {}
  local bits, count = 0, 0
  for i = 1, #text do
    local v = VALUE[text:byte(i)]
    if v == nil then
      return nil, "not base64url at byte " .. i
    end
    bits = (bits << 6) | v
    count = count + 6
    if count >= 8 then
      count = count - 8
      out[#out + 1] = string.char((bits >> count) & 0xFF)
      bits = bits & ((1 << count) - 1)
    end
  end
  return table.concat(out)
end

return M
