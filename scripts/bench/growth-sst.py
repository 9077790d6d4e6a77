"""growth-sst.py: is the growth figures' page-latency ratio the registry's size, or
where RocksDB holds the keys? Builds the bench's two growth instances (10 tags /
10 repos and 100,000 tags / 10,000 repos, on /dev/shm), measures the n=10 tag and
catalog pages (p50 over one keep-alive connection, as a ratio big/small), then
restarts both (RocksDB flushes the recovered memtables into SST files at open, so
both read from tables) and measures again. Run: /usr/bin/python3 scripts/bench/growth-sst.py
after `make bench` has built build/georeg and its tools (docs/BENCHMARKS.md)."""
import sys, os, time, socket, statistics, tempfile, shutil
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.chdir(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import bench as B
os.makedirs(B.RUN_DIR, exist_ok=True)
data = B.make_data()

def lat(port, path, n=3000):
    s = socket.create_connection(("127.0.0.1", port))
    req = f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    ts = []
    for i in range(n):
        t = time.perf_counter()
        s.sendall(req)
        buf = b""
        while True:
            buf += s.recv(65536)
            h, sep, body = buf.partition(b"\r\n\r\n")
            if sep:
                cl = int([l.split(b":")[1] for l in h.split(b"\r\n") if l.lower().startswith(b"content-length")][0])
                if len(body) >= cl:
                    break
        ts.append(time.perf_counter() - t)
    s.close()
    return statistics.median(ts[500:]) * 1e6

shm = tempfile.mkdtemp(prefix="gx-", dir="/dev/shm")
try:
    small = B.start_georeg("gx-small", os.path.join(shm, "small"))
    big = B.start_georeg("gx-big", os.path.join(shm, "big"))
    B.populate_growth(small, data, B.SMALL_TAGS, B.SMALL_REPOS)
    B.populate_growth(big, data, B.GROWTH_TAGS, B.GROWTH_REPOS)
    time.sleep(3)
    paths = {"tags n=10": "/v2/bench/img/tags/list?n=10", "catalog n=10": "/v2/_catalog?n=10"}
    for rnd in range(2):
        for k, p in paths.items():
            a, b = lat(small.port, p), lat(big.port, p)
            print(f"{k}: small {a:.1f} us big {b:.1f} us ratio {b/a:.2f}", flush=True)
    # restart both: RocksDB flushes the recovered memtables to L0 at open
    for name, srv in (("gx-small", small), ("gx-big", big)):
        srv.proc.terminate(); srv.proc.wait()
    small = B.start_georeg("gx-small2", os.path.join(shm, "small"))
    big = B.start_georeg("gx-big2", os.path.join(shm, "big"))
    time.sleep(3)
    print("after restart (everything in SST files):")
    for rnd in range(2):
        for k, p in paths.items():
            a, b = lat(small.port, p), lat(big.port, p)
            print(f"{k}: small {a:.1f} us big {b:.1f} us ratio {b/a:.2f}", flush=True)
    for srv in (small, big):
        srv.proc.terminate(); srv.proc.wait()
finally:
    shutil.rmtree(shm, ignore_errors=True)
