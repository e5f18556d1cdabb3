-- The session's entries in its bucket's outbox, {xid, fields, ...} (KEYS and ARGV[1] as every script's).
local out = {}
for _, e in ipairs(outbox_entries()) do
  if e[2][2] == A_SESSION then
    out[#out + 1] = e[1]
    out[#out + 1] = e[2]
  end
end
return out
