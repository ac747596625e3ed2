"""A small HTTP load generator, standard library only, so it runs in any of our images.

    python loadgen.py latency URL BODY REQUESTS          -> {"p50_ms", "p99_ms", "n"}
    python loadgen.py throughput URL BODY SECONDS THREADS -> {"rps", "n", "errors"}

Keep-alive connections, one per thread; BODY is the JSON request body.
"""

import http.client
import json
import statistics
import sys
import threading
import time
from urllib.parse import urlsplit


def connection(url):
    parts = urlsplit(url)
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=30), parts.path


def post(conn, path, body):
    conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
    answer = conn.getresponse()
    answer.read()
    return answer.status


def latency(url, body, requests):
    conn, path = connection(url)
    for _ in range(20):  # warm-up
        post(conn, path, body)
    samples = []
    for _ in range(requests):
        start = time.perf_counter()
        status = post(conn, path, body)
        samples.append((time.perf_counter() - start) * 1000)
        if status != 200:
            raise SystemExit(f"status {status}")
    samples.sort()
    return {
        "p50_ms": statistics.median(samples),
        "p99_ms": samples[min(len(samples) - 1, int(len(samples) * 0.99))],
        "n": len(samples),
    }


def throughput(url, body, seconds, threads):
    counts, errors = [0] * threads, [0] * threads
    stop = time.perf_counter() + seconds

    def worker(i):
        conn, path = connection(url)
        while time.perf_counter() < stop:
            if post(conn, path, body) == 200:
                counts[i] += 1
            else:
                errors[i] += 1

    start = time.perf_counter()
    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - start
    return {"rps": sum(counts) / elapsed, "n": sum(counts), "errors": sum(errors)}


if __name__ == "__main__":
    mode, url, body = sys.argv[1], sys.argv[2], sys.argv[3]
    if mode == "latency":
        result = latency(url, body, int(sys.argv[4]))
    else:
        result = throughput(url, body, float(sys.argv[4]), int(sys.argv[5]))
    print(json.dumps(result))
