#!/usr/bin/env python3
"""Serving benchmark of BENCHMARKS.md (issue 17): an OpenAI-compatible
server under concurrent clients, stdlib only, printing one JSON line per
server.

    scripts/bench-serve.py NAME=BASE_URL [NAME=BASE_URL ...] [--seconds 60] [--max-tokens 128]

For each server, in turn (never at the same time, so each has the machine):
  throughput: 1, 4 and 8 clients each sending greedy /v1/completions
    requests (max_tokens --max-tokens) back to back for --seconds; the
    aggregate is completion tokens (from each response's usage) per second
    of wall time;
  short under load: 2 clients keep 1,500-token requests running while one
    client sends 2-token requests one after another; p50/p95/max latency of
    those, and of the same short requests on the idle server.
"""
import json, sys, threading, time, urllib.request

PROMPTS = ["1, 2, 3, 4, 5, 6, 7, 8,", "Once upon a time, in a small village by the sea,", "The history of the Roman Empire begins", "Here is a list of fruits: apple, banana,"]


def arg(name, default):
    return type(default)(sys.argv[sys.argv.index(name) + 1]) if name in sys.argv else default


def complete(base, prompt, max_tokens, timeout=600):
    body = json.dumps({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0}).encode()
    req = urllib.request.Request(base + "/completions", body, {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.load(r)["usage"]["completion_tokens"]


def throughput(base, clients, seconds, max_tokens):
    tokens, stop = [0] * clients, time.time() + seconds
    def run(i):
        k = i
        while time.time() < stop:
            tokens[i] += complete(base, PROMPTS[k % len(PROMPTS)], max_tokens)
            k += 1
    t0 = time.time()
    ts = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    return sum(tokens) / (time.time() - t0)


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def short_latencies(base, n):
    out = []
    for i in range(n):
        t0 = time.time()
        complete(base, PROMPTS[i % len(PROMPTS)], 2)
        out.append(time.time() - t0)
    return out


def under_load(base, n):
    stop = threading.Event()
    def long_client():
        while not stop.is_set():
            complete(base, PROMPTS[0], 1500)
    ts = [threading.Thread(target=long_client, daemon=True) for _ in range(2)]
    [t.start() for t in ts]
    time.sleep(3)  # let the long ones start decoding
    lat = short_latencies(base, n)
    stop.set()
    [t.join() for t in ts]  # the next server gets an idle machine
    return lat


def main():
    servers = [a.split("=", 1) for a in sys.argv[1:] if "=" in a and not a.startswith("--")]
    seconds, max_tokens = arg("--seconds", 60), arg("--max-tokens", 128)
    for name, base in servers:
        complete(base, "warm up", 4)
        res = {"server": name, "max_tokens": max_tokens, "seconds": seconds}
        for c in (1, 4, 8):
            res[f"tok_s_{c}_clients"] = round(throughput(base, c, seconds, max_tokens), 2)
        idle = short_latencies(base, 10)
        loaded = under_load(base, 20)
        res["short_idle_s"] = {"p50": round(pct(idle, 50), 3), "p95": round(pct(idle, 95), 3)}
        res["short_under_load_s"] = {"p50": round(pct(loaded, 50), 3), "p95": round(pct(loaded, 95), 3), "max": round(max(loaded), 3), "n": len(loaded)}
        print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
