-- wrk script used by scripts/bench/bench.py for every GET figure.
-- Sends the Accept header an OCI client sends for a manifest (harmless on blob
-- GETs) and prints one machine-readable summary line for bench.py to parse.
wrk.headers["Accept"] = "application/vnd.oci.image.manifest.v1+json, " ..
  "application/vnd.oci.image.index.v1+json, " ..
  "application/vnd.docker.distribution.manifest.v2+json, " ..
  "application/vnd.docker.distribution.manifest.list.v2+json"

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect_errors":%d,' ..
    '"read_errors":%d,"write_errors":%d,"status_errors":%d,"timeouts":%d,' ..
    '"lat_mean_us":%.1f,"lat_p50_us":%d,"lat_p90_us":%d,"lat_p99_us":%d,' ..
    '"lat_p999_us":%d,"lat_max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency.mean, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.max))
end
