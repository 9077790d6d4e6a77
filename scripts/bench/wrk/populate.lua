-- wrk script used by scripts/bench/bench.py to populate the growth instance
-- quickly (one wrk thread, several keep-alive connections).
--
-- env: POP_MODE  tags  : PUT manifest POP_REPO:<POP_PREFIX><i>          (i < POP_N)
--                mount : POST /v2/<POP_PREFIX><i>/blobs/uploads/?mount=CFG&from=POP_REPO
--                repos : PUT manifest <POP_PREFIX><i>:latest
--      POP_N, POP_REPO, POP_PREFIX, POP_CFG (config digest), POP_CFGSIZE
--
-- Run with -t1 only. wrk calls request() once on thread 0 before the run to
-- check it (script_verify_request), so the first call returns a harmless GET
-- and the counter starts at -1. bench.py verifies the counts afterwards and
-- fills any gap itself, so a different wrk behaviour cannot skew the data.
-- wrk exits (os.exit) as soon as POP_N requests got 201; any other status but
-- 200 (the filler GETs) aborts with exit code 3.
local N = tonumber(os.getenv("POP_N"))
local mode = os.getenv("POP_MODE")
local repo = os.getenv("POP_REPO")
local prefix = os.getenv("POP_PREFIX")
local cfg = os.getenv("POP_CFG")
local cfgsize = os.getenv("POP_CFGSIZE")
local i, created = -1, 0
local mh = {["Content-Type"] = "application/vnd.oci.image.manifest.v1+json"}

local function manifest(n)
  return '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",' ..
    '"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"' .. cfg ..
    '","size":' .. cfgsize .. '},"layers":[],"annotations":{"bench.n":"' .. n .. '"}}'
end

request = function()
  local n = i
  i = i + 1
  if n < 0 or n >= N then
    return wrk.format("GET", "/v2/")
  end
  local name = string.format("%s%06d", prefix, n)
  if mode == "tags" then
    return wrk.format("PUT", "/v2/" .. repo .. "/manifests/" .. name, mh, manifest(name))
  elseif mode == "mount" then
    return wrk.format("POST", "/v2/" .. name .. "/blobs/uploads/?mount=" .. cfg .. "&from=" .. repo,
      {["Content-Length"] = "0"})
  else
    return wrk.format("PUT", "/v2/" .. name .. "/manifests/latest", mh, manifest(name))
  end
end

response = function(status, headers, body)
  if status == 201 then
    created = created + 1
    if created >= N then
      os.exit(0)
    end
  elseif status ~= 200 then
    io.stderr:write("populate: HTTP " .. status .. ": " .. tostring(body) .. "\n")
    os.exit(3)
  end
end
