#!/usr/bin/env python3
"""A small batch engine for any OpenAI-compatible server, stdlib only: runs
the lines of an OpenAI Batch input file (as `tunegate eval --export-batch`
writes them) against BASE_URL, N at a time, and writes OpenAI's Batch output
format, which `tunegate eval --import-batch` reads. For servers without a
batch endpoint (`tunegate serve`, llama-server, a vLLM server you already
run); on a GPU cluster use `vllm run-batch` instead.

    scripts/run-batch.py INPUT.jsonl BASE_URL OUTPUT.jsonl [--parallel 8] [--api-key KEY]

BASE_URL ends in /v1 (each line's `url`, e.g. /v1/completions, is joined to
the server's root). A line the server refuses is written with its status and
body; one it cannot reach is written as an `error` line, as OpenAI does.
"""
import json, sys, threading, urllib.error, urllib.request, uuid
from concurrent.futures import ThreadPoolExecutor


def arg(name, default):
    return type(default)(sys.argv[sys.argv.index(name) + 1]) if name in sys.argv else default


def run(line, root, key):
    headers = {"content-type": "application/json"}
    if key:
        headers["authorization"] = f"Bearer {key}"
    req = urllib.request.Request(root + line["url"], json.dumps(line["body"]).encode(), headers, method=line.get("method", "POST"))
    out = {"id": f"batch_req_{uuid.uuid4().hex[:24]}", "custom_id": line["custom_id"], "response": None, "error": None}
    try:
        with urllib.request.urlopen(req, timeout=600) as r:
            out["response"] = {"status_code": r.status, "request_id": r.headers.get("x-request-id", ""), "body": json.load(r)}
    except urllib.error.HTTPError as e:
        body = e.read().decode("utf-8", "replace")
        try:
            body = json.loads(body)
        except ValueError:
            body = {"error": {"message": body}}
        out["response"] = {"status_code": e.code, "request_id": "", "body": body}
    except (urllib.error.URLError, OSError) as e:
        out["error"] = {"code": "connection_error", "message": str(e)}
    return out


def main():
    src, base, dst = sys.argv[1:4]
    root = base.rstrip("/").removesuffix("/v1")
    lines = [json.loads(l) for l in open(src) if l.strip()]
    lock, done = threading.Lock(), [0]
    with open(dst, "w") as f, ThreadPoolExecutor(arg("--parallel", 8)) as pool:
        for out in pool.map(lambda l: run(l, root, arg("--api-key", "")), lines):
            with lock:
                f.write(json.dumps(out) + "\n")
                done[0] += 1
                print(f"\r{done[0]}/{len(lines)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)


if __name__ == "__main__":
    main()
