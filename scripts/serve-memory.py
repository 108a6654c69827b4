#!/usr/bin/env python3
"""Resident memory of `tunegate serve` before, during and after fine-tuning
jobs (issue 17, item 8), stdlib only:

    scripts/serve-memory.py BASE_URL PID [--jobs 5] [--examples 40] [--settle S]

Uploads a training file of the bundled example's messages, then runs the
jobs one after another (1 epoch each), each followed by one chat request to
the tuned model as a user would make; prints one JSON line with the RSS
(MiB, from /proc/PID/status) idle at start, the peak during each job (the
server alone, and with the child process it trains in), after each job and
its chat, and idle at the end (S seconds after the last chat, default 5:
start the server with `--tuned-keep-alive` below S to see the tuned models
let go).
"""
import io, json, sys, threading, time, urllib.request, uuid

base, pid = sys.argv[1], int(sys.argv[2])
arg = lambda n, d: int(sys.argv[sys.argv.index(n) + 1]) if n in sys.argv else d


def rss_of(p):
    try:
        for line in open(f"/proc/{p}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 0


def rss():
    return rss_of(pid)


def children_rss():
    """The server's child processes (serve trains each job in one)."""
    import os
    total = 0
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if int(open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1]) == pid:
                    total += rss_of(d)
            except (OSError, ValueError, IndexError):
                pass
    return total


def call(method, path, body=None, ctype="application/json"):
    req = urllib.request.Request(base + path, body, {"content-type": ctype}, method=method)
    with urllib.request.urlopen(req, timeout=900) as r:
        return json.load(r)


rows = [json.loads(l) for l in open("examples/support-triage/data/examples.jsonl")][: arg("--examples", 40)]
lines = "".join(json.dumps({"messages": [{"role": "user", "content": f"Message: {r['input']}\nTeam:"}, {"role": "assistant", "content": f" {r['expected']}"}]}) + "\n" for r in rows)
b = uuid.uuid4().hex
form = f"--{b}\r\ncontent-disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n--{b}\r\ncontent-disposition: form-data; name=\"file\"; filename=\"t.jsonl\"\r\n\r\n{lines}\r\n--{b}--\r\n".encode()
fid = call("POST", "/files", form, f"multipart/form-data; boundary={b}")["id"]
out = {"idle_start": rss(), "jobs": []}
for i in range(arg("--jobs", 5)):
    job = call("POST", "/fine_tuning/jobs", json.dumps({"model": "gemma-3-270m", "training_file": fid, "hyperparameters": {"n_epochs": 1}}).encode())
    peak, peak_all = 0, 0
    while job["status"] not in ("succeeded", "failed", "cancelled"):
        peak = max(peak, rss())
        peak_all = max(peak_all, rss() + children_rss())
        time.sleep(0.2)
        job = call("GET", f"/fine_tuning/jobs/{job['id']}")
    after_job = rss()
    call("POST", "/chat/completions", json.dumps({"model": job["fine_tuned_model"], "messages": [{"role": "user", "content": "Message: my parcel is late\nTeam:"}], "max_tokens": 3}).encode())
    out["jobs"].append({"status": job["status"], "peak": peak, "peak_with_child": peak_all, "after_job": after_job, "after_chat": rss()})
time.sleep(arg("--settle", 5))
out["idle_end"] = rss()
print(json.dumps(out))
