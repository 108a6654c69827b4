"""`tunegate serve` driven by the official OpenAI Python SDK (issue 17).

    python openai_client.py BASE_URL API_KEY

Every call is one a user of the SDK makes; every result is asserted. Exits
non-zero at the first difference, naming it. Run by tests/serve_sdk.rs.
"""
import io, json, sys, time
import openai
from openai import OpenAI

base, key = sys.argv[1], sys.argv[2]
# No retries: a 4xx must be final, and a retried 5xx would hide a bug.
client = OpenAI(base_url=base, api_key=key, max_retries=0, timeout=300)
MODEL = "gemma-3-270m"
checks = 0


def check(cond, what):
    global checks
    if not cond:
        sys.exit(f"FAILED: {what}")
    checks += 1


def refused(kind, param, code, fn):
    try:
        fn()
    except kind as e:
        err = e.body if isinstance(e.body, dict) else {}
        check(err.get("param") == param and err.get("code") == code, f"{kind.__name__} param={param} code={code}, got {err}")
        return
    sys.exit(f"FAILED: expected {kind.__name__} for {param}")


msgs = [{"role": "user", "content": "Say hi."}]

# Chat, with usage.
r = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=5)
check(r.choices[0].message.role == "assistant" and r.choices[0].finish_reason in ("stop", "length"), f"chat: {r}")
check(r.usage.completion_tokens <= 5 and r.usage.prompt_tokens > 0, f"usage: {r.usage}")

# n choices.
r = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=4, n=3, temperature=1.0, seed=3)
check(sorted(c.index for c in r.choices) == [0, 1, 2], f"n=3: {r.choices}")

# Log-probabilities.
r = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=3, logprobs=True, top_logprobs=2)
lp = r.choices[0].logprobs.content
check(len(lp) == r.usage.completion_tokens and all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in lp), f"logprobs: {lp}")

# Streamed log-probabilities: chunk by chunk, together the same as the whole answer's (greedy).
whole = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=6, temperature=0, logprobs=True, top_logprobs=2)
parts = [c for c in client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=6, temperature=0, logprobs=True, top_logprobs=2, stream=True) if c.choices and c.choices[0].logprobs]
streamed = [t for c in parts for t in (c.choices[0].logprobs.content or [])]
check([(t.token, t.logprob, [a.token for a in t.top_logprobs]) for t in streamed] == [(t.token, t.logprob, [a.token for a in t.top_logprobs]) for t in whole.choices[0].logprobs.content], f"stream logprobs: {streamed} vs {whole.choices[0].logprobs.content}")

# Streaming with usage.
chunks = list(client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=6, stream=True, stream_options={"include_usage": True}))
text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
check(chunks[-1].usage is not None and chunks[-1].choices == [] and chunks[-1].usage.completion_tokens <= 6, f"stream usage: {chunks[-1]}")
check(any(c.choices and c.choices[0].finish_reason for c in chunks), "stream: a finish_reason")
check(isinstance(text, str), "stream text")

# Legacy completions with echo.
r = client.completions.create(model=MODEL, prompt="The sky is", max_tokens=3, echo=True)
check(r.choices[0].text.startswith("The sky is"), f"echo: {r.choices[0].text!r}")

# Every error of the issue is a typed, final SDK exception with param and code.
refused(openai.BadRequestError, "max_tokens", "invalid_value", lambda: client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=-5))
refused(openai.BadRequestError, "max_tokens", "invalid_value", lambda: client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=0))
refused(openai.BadRequestError, "max_tokens", "invalid_type", lambda: client.chat.completions.create(model=MODEL, messages=msgs, extra_body={"max_tokens": "abc"}))
refused(openai.BadRequestError, "temperature", "invalid_type", lambda: client.chat.completions.create(model=MODEL, messages=msgs, extra_body={"temperature": "hot"}))
refused(openai.BadRequestError, "top_p", "invalid_value", lambda: client.chat.completions.create(model=MODEL, messages=msgs, top_p=1.5))
refused(openai.BadRequestError, "top_k", "invalid_value", lambda: client.chat.completions.create(model=MODEL, messages=msgs, extra_body={"top_k": -3}))
refused(openai.BadRequestError, "n", "invalid_value", lambda: client.chat.completions.create(model=MODEL, messages=msgs, n=0))
refused(openai.BadRequestError, "messages", "context_length_exceeded", lambda: client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "word " * 40000}]))
refused(openai.BadRequestError, "messages", "context_length_exceeded", lambda: list(client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "word " * 40000}], stream=True)))
refused(openai.NotFoundError, "model", "model_not_found", lambda: client.chat.completions.create(model="nope", messages=msgs))
refused(openai.NotFoundError, "model", "model_not_found", lambda: client.models.retrieve("nope"))
try:
    OpenAI(base_url=base, api_key="wrong", max_retries=0).models.list()
    sys.exit("FAILED: a wrong key was accepted")
except openai.AuthenticationError as e:
    check(e.body.get("code") == "invalid_api_key", f"auth: {e.body}")

# Models.
check(MODEL in [m.id for m in client.models.list().data], "models.list")
check(client.models.retrieve(MODEL).id == MODEL, "models.retrieve")

# Files: bad uploads refused with the line, good ones listed, read, deleted.
refused(openai.BadRequestError, "file", "invalid_file", lambda: client.files.create(file=("empty.jsonl", io.BytesIO(b"")), purpose="fine-tune"))
refused(openai.BadRequestError, "file", "invalid_file", lambda: client.files.create(file=("bad.jsonl", io.BytesIO(b'{"messages": []}\n')), purpose="fine-tune"))
labels = {"charged twice": "billing", "app crashes": "technical", "cannot log in": "account", "parcel late": "shipping"}
lines = "".join(json.dumps({"messages": [{"role": "user", "content": f"Message: {m}\nTeam:"}, {"role": "assistant", "content": f" {l}"}]}) + "\n" for m, l in labels.items())
f = client.files.create(file=("train.jsonl", io.BytesIO(lines.encode())), purpose="fine-tune")
extra = client.files.create(file=("extra.jsonl", io.BytesIO(lines.encode())), purpose="fine-tune")
check(f.bytes == len(lines.encode()) and f.filename == "train.jsonl", f"file: {f}")
check({f.id, extra.id} <= {x.id for x in client.files.list().data}, "files.list")
check(client.files.retrieve(f.id).filename == "train.jsonl", "files.retrieve")
check(client.files.content(f.id).read() == lines.encode(), "files.content")
check(client.files.delete(extra.id).deleted, "files.delete")
refused(openai.NotFoundError, None, "not_found", lambda: client.files.retrieve(extra.id))

# Fine-tuning: bad hyper-parameters refused at creation, naming the field.
refused(openai.BadRequestError, "hyperparameters.learning_rate_multiplier", "invalid_value", lambda: client.fine_tuning.jobs.create(model=MODEL, training_file=f.id, hyperparameters={"learning_rate_multiplier": -5}))
refused(openai.BadRequestError, "hyperparameters.n_epochs", "invalid_value", lambda: client.fine_tuning.jobs.create(model=MODEL, training_file=f.id, hyperparameters={"n_epochs": -1}))
refused(openai.BadRequestError, "hyperparameters.batch_size", "invalid_value", lambda: client.fine_tuning.jobs.create(model=MODEL, training_file=f.id, hyperparameters={"batch_size": 0}))
job = client.fine_tuning.jobs.create(model=MODEL, training_file=f.id, hyperparameters={"n_epochs": 1, "batch_size": 2}, suffix="sdk")
deadline = time.time() + 600
while job.status not in ("succeeded", "failed", "cancelled"):
    check(time.time() < deadline, "the job did not end within 600 s")
    time.sleep(1)
    job = client.fine_tuning.jobs.retrieve(job.id)
check(job.status == "succeeded" and job.finished_at and job.finished_at >= job.created_at, f"job: {job}")
events = client.fine_tuning.jobs.list_events(job.id, limit=2)
check(len(events.data) == 2 and events.has_more, f"events: {events}")
check([j.id for j in client.fine_tuning.jobs.list(limit=1).data] == [job.id], "jobs.list(limit=1)")
r = client.chat.completions.create(model=job.fine_tuned_model, messages=[{"role": "user", "content": "Message: parcel late\nTeam:"}], max_tokens=3)
check(r.model == job.fine_tuned_model and r.choices[0].message.content is not None, f"tuned model: {r}")
check(job.fine_tuned_model in [m.id for m in client.models.list().data], "the tuned model is listed")
second = client.fine_tuning.jobs.create(model=MODEL, training_file=f.id, hyperparameters={"n_epochs": 5})
check(client.fine_tuning.jobs.cancel(second.id).status == "cancelled", "cancel")
print(json.dumps({"checks": checks, "job": job.id}))
