#!/usr/bin/env python3
"""Generates the llama.cpp reference fixtures for tunegate-model's tests.

Run once, with a Python environment that has llama-cpp-python installed, and
commit the outputs (not llama.cpp):

    /work/venvs/llama/bin/python scripts/tokenizer-fixtures/gen.py [MODEL.gguf]

Outputs (under crates/tunegate-model/tests/fixtures/):

- tokenizer.jsonl: deterministic (seeded) varied strings with llama.cpp's ids
  for add_bos=true and parse_special false/true, plus llama_detokenize's text.
- greedy.jsonl: prompts with llama.cpp's first 32 greedy tokens (argmax of
  the logits, n_threads=2, full model) and the first step's top-5 logits, for
  a forward-pass parity test.
- llamacpp-speed.json: llama.cpp prefill/decode speed on a 103-token prompt
  with 64 generated tokens, n_threads=2, median of 3 runs.

Pass --tokenizer-only, --greedy-only (with --no-speed) or --speed-only to
regenerate one part.
"""

import ctypes
import json
import os
import random
import statistics
import sys
import time

import llama_cpp
import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(ROOT, "crates", "tunegate-model", "tests", "fixtures")
SEED = 20250611

# llama_token_attr bits (llama.h)
ATTR_UNKNOWN = 1 << 0
ATTR_CONTROL = 1 << 3
ATTR_USER_DEFINED = 1 << 4
ATTR_BYTE = 1 << 5


def default_model_path():
    if os.environ.get("TUNEGATE_MODEL") and os.path.exists(os.environ["TUNEGATE_MODEL"]):
        return os.environ["TUNEGATE_MODEL"]
    if os.environ.get("TUNEGATE_HOME"):
        d = os.path.join(os.environ["TUNEGATE_HOME"], "models")
    elif os.environ.get("XDG_CACHE_HOME"):
        d = os.path.join(os.environ["XDG_CACHE_HOME"], "tunegate", "models")
    else:
        d = os.path.expanduser("~/.cache/tunegate/models")
    return os.path.join(d, "gemma-3-270m-q4_k_m.gguf")


# ---------------------------------------------------------------- strings

WORDS = """the a to of and in is it you that for on with my was have this be are not
order card charged twice refund account password login reset shipping package
delivered late broken app crash error update invoice billing subscription cancel
upgrade plan email phone address help please thanks hello hi support team issue
problem cannot can't won't doesn't I'm we're it's don't payment failed declined
tracking number return exchange warranty damaged missing item size color store
website checkout cart discount coupon code expired price total tax fee monthly
annual premium basic free trial download install device android iphone laptop
screen battery charger cable wifi bluetooth settings profile username verify
security two-factor locked suspended fraud dispute receipt statement balance""".split()

NAMES = ["Alice", "Bob", "Chen Wei", "María José", "Jürgen", "Zoë", "Ömer", "Siobhán",
         "Nguyễn Văn An", "Łukasz", "François", "Ana Luísa", "Priya", "Kwame", "Aiko"]

SUPPORT = [
    "My card was charged twice for order #{n}.",
    "Hi, I can't log into my account since yesterday. Reset link never arrives!!",
    "Where is my package? Tracking says delivered but nothing at the door.",
    "The app keeps crashing when I open settings on Android {v}.",
    "I want a refund for invoice INV-{n}, the product arrived broken :(",
    "Please cancel my subscription before the next billing date ({d}).",
    "hello??? anyone there. been waiting {k} days for a reply",
    "Your website says 'payment failed' but my bank shows the charge of ${p}.",
    "Can I change the shipping address for order {n} to {addr}?",
    "I was charged ${p} instead of ${q} — why the difference?",
    "Two-factor codes aren't arriving by SMS to +1 (555) 0{k}{k}-12{k}4.",
    "Thanks {name}, that fixed it! 👍",
    "URGENT: account locked after too many attempts, need access for a meeting at {t}",
    "Bonjour, ma commande n°{n} n'est jamais arrivée. Pouvez-vous m'aider ?",
    "Hola, quiero devolver el artículo, ¿cuál es el proceso?",
    "Guten Tag, die Rechnung über {p} € ist falsch.",
    "注文番号{n}の商品がまだ届いていません。",
    "我的账户被锁定了，请帮忙解锁。",
    "주문한 상품이 파손되어 도착했습니다. 환불 부탁드립니다.",
    "مرحبا، لم أستلم طلبي رقم {n} حتى الآن.",
    "Здравствуйте! Не могу войти в аккаунт.",
    "The discount code SAVE{k}0 says expired but the email said valid until {d}",
    "my email is {user}@example.com, pls update it to {user}.new@example.org",
    "Wifi keeps dropping after the update v{v}.{k} :( :( :(",
]

EMOJI = ["😀", "😂", "🥲", "👍", "👍🏽", "❤️", "🔥", "🚀", "🎉", "🙏", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇫🇷",
         "🇯🇵", "✅", "❌", "⚠️", "💳", "📦", "🤖", "🧑🏿‍💻", "☕", "🍕", "🫠", "🪿"]

SCRIPTS = {
    "cjk": "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过家学对可她里后小么心多天而能好都然没日于起还发成事只作当想看文无开手十用主行方又如前所本见经头面公同三已老从动两长知民样现分将外但身些与高意进把法此实回二理美点月明其种声全工己话儿者向情部正",
    "kana": "あいうえおかきくけこさしすせそたちつてとなにぬねのはひふへほまみむめもやゆよらりるれろわをんアイウエオカキクケコサシスセソタチツテトナニヌネノハヒフヘホマミムメモヤユヨラリルレロワヲンー",
    "hangul": "가나다라마바사아자차카타파하고노도로모보소오조초코토포호구누두루무부수우주추쿠투푸후안녕하세요감사합니다",
    "arabic": "ابتثجحخدذرزسشصضطظعغفقكلمنهوي ءآأؤإئ",
    "hebrew": "אבגדהוזחטיכלמנסעפצקרשת",
    "devanagari": "अआइईउऊएऐओऔकखगघचछजझटठडढणतथदधनपफबभमयरलवशषसहािीुूेैोौं्",
    "thai": "กขฃคฅฆงจฉชซฌญฎฏฐฑฒณดตถทธนบปผฝพฟภมยรลวศษสหฬอฮะาิีึืุู",
    "cyrillic": "абвгдеёжзийклмнопрстуфхцчшщъыьэюяАБВГДЕЁЖЗИЙКЛМНОПРСТУФХЦЧШЩЪЫЬЭЮЯ",
    "greek": "αβγδεζηθικλμνξοπρστυφχψωΑΒΓΔΕΖΗΘΙΚΛΜΝΞΟΠΡΣΤΥΦΧΨΩάέήίόύώ",
    "latin_ext": "àáâãäåæçèéêëìíîïðñòóôõöøùúûüýþÿĀāĂăĄąĆćČčĎďĒēĘęĚěĞğĪīİıŁłŃńŇňŐőŒœŘřŚśŞşŠšŢţŤťŪūŮůŰűŸŹźŻżŽžßẞ",
}

CODE = [
    "def f(x):\n    return x * 2\n",
    "fn main() {\n    println!(\"{}\", 1 + 2);\n}\n",
    "for (let i = 0; i < n; i++) { sum += a[i]; }",
    "SELECT id, name FROM users WHERE email LIKE '%@example.com' ORDER BY id DESC;",
    "if err != nil {\n\treturn fmt.Errorf(\"open %s: %w\", path, err)\n}",
    "#include <stdio.h>\nint main(void) { printf(\"hi\\n\"); return 0; }",
    "<div class=\"card\"><p>Hello &amp; welcome</p></div>",
    "$ cargo test -p tunegate-model -- --nocapture 2>&1 | tail -n 20",
    "x = [1, 2, 3]\ny = {k: v for k, v in zip('abc', x)}\n",
    "    indented = True\n\t\ttabbed = False\n",
    "// TODO(alice): handle the edge case\r\n/* block */",
    "```python\nprint('hello')\n```",
    "| a | b |\n|---|---|\n| 1 | 2 |",
    "a:\n  - b: 1\n    c: [x, y]\n",
    "lambda x: x**2 if x >= 0 else -x  # abs-ish",
]

SPECIAL_TEXT = [
    "<start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\n",
    "<start_of_turn>user\nMy card was charged twice<end_of_turn>\n<start_of_turn>model\nbilling<end_of_turn>",
    "<bos>", "<eos>", "<pad>", "<unk>", "<mask>", "<bos><bos>", "<eos> <bos>",
    "<start_of_turn>", "<end_of_turn>", "<start_of_turn", "start_of_turn>", "<<start_of_turn>>",
    "<start_of_turn><start_of_turn>model", "text<end_of_turn>more text",
    "<unused0>", "<unused1> x", "<start_of_image>", "<end_of_image>", "<image_soft_token>",
    "<b>bold</b> <i>it</i> <table><tr><td>1</td></tr></table>",
    "<h1>Title</h1>\n<h2>Sub</h2>", "[multimodal]", "<start_of_turn>system\nBe brief.<end_of_turn>",
    " <start_of_turn>user\n  spaced  <end_of_turn> ",
]

WS = [" ", "  ", "   ", "    ", "        ", "\n", "\n\n", "\n\n\n", "\t", "\t\t", "\r\n", " \n",
      "\n ", " \t ", "\u00a0", "\u2003", "\u3000", "\u200b", "\ufeff", "\u2581", "\u2581\u2581"]

PUNCT = list(".,;:!?'\"()[]{}<>/\\|@#$%^&*-_=+~`…—–«»“”‘’¿¡·•§¶°±×÷")


def rare_char(rng):
    """A random valid code point, weighted towards planes llama's vocab lacks."""
    while True:
        r = rng.random()
        if r < 0.2:
            cp = rng.randrange(0x20, 0x250)
        elif r < 0.4:
            cp = rng.randrange(0x250, 0x3000)
        elif r < 0.6:
            cp = rng.randrange(0x3000, 0xD800)
        elif r < 0.7:
            cp = rng.randrange(0xE000, 0x10000)  # incl. private use
        elif r < 0.85:
            cp = rng.randrange(0x10000, 0x20000)  # SMP: emoji, historic scripts
        elif r < 0.95:
            cp = rng.randrange(0x20000, 0x32000)  # CJK ext
        else:
            cp = rng.randrange(0xE0000, 0x110000)  # tags, supplementary private use
        if 0xD800 <= cp < 0xE000:
            continue
        return chr(cp)


def fill(rng, tmpl):
    return tmpl.format(
        n=rng.randrange(1000, 999999), v=rng.randrange(5, 15), d=f"2024-0{rng.randrange(1, 10)}-{rng.randrange(10, 29)}",
        k=rng.randrange(1, 10), p=f"{rng.randrange(1, 999)}.{rng.randrange(0, 100):02d}",
        q=f"{rng.randrange(1, 999)}.{rng.randrange(0, 100):02d}", t=f"{rng.randrange(1, 13)}:{rng.randrange(0, 60):02d}pm",
        name=rng.choice(NAMES), addr=f"{rng.randrange(1, 999)} Main St, Apt {rng.randrange(1, 40)}",
        user=rng.choice(["jdoe", "alice.w", "bob_99", "x"]))


def make_strings(vocab_pieces, user_defined, control_sample, rng):
    s = []
    add = s.append
    # fixed edge cases
    for t in ["", " ", "  ", "\n", "\t", "a", "A", "0", "Hello world", " Hello world", "Hello world ",
              "Hello  world", "hello\nworld", "Message: My card was charged twice\nTeam:", "▁", "▁Hello",
              "<0x41>", "[EMPTY_0]", "é", "e\u0301", "ﬁ", "\x00", "\x01\x02\x1f\x7f", "\ud7ff", "\uffff",
              "\U0010ffff", "�", "\\n", "\\u00e9", "..." , "—", "1234567890", "3.14159", "-0.0", "1e-9",
              "$1,234.56", "50%", "100,000,000", "2024-06-11T12:34:56Z", "192.168.0.1", "https://example.com/a?b=c&d=e#f",
              "user@example.com", "C:\\Users\\me\\file.txt", "ALL CAPS SENTENCE!", "camelCaseIdentifier",
              "snake_case_identifier", "kebab-case-id", "a" * 50, "ab" * 40, " " * 17, "\n" * 40, "\t" * 9,
              "!!!???", "¿Qué?", "naïve café résumé", "Straße", "İstanbul", "ǅ", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "𝟘𝟙𝟚",
              "Ｆｕｌｌｗｉｄｔｈ", "½ ¼ ¾", "™ © ®", "∑∫∂√∞≠≤≥", "→ ← ↑ ↓", "♠♣♥♦", "𓀀𓀁", "ꙮ", "🫠🪿",
              "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇫🇷🇯🇵", "a\u200bb", "\ufeffBOM", "\u202eRTL override", "x\u0000y"]:
        add(t)
    add(json.dumps({"input": "My card was charged twice", "expected": "billing", "tags": ["email"]}))
    add(json.dumps({"a": [1, 2.5, None, True], "b": {"c": "d\ne"}}, indent=2))
    add(json.dumps({"name": "Zoë", "emoji": "🚀", "cjk": "漢字"}, ensure_ascii=False))
    add(json.dumps({"name": "Zoë", "emoji": "🚀"}))  # \u escapes
    for t in SPECIAL_TEXT:
        add(t)
    for t in CODE:
        add(t)
    for name, chars in SCRIPTS.items():
        add(chars)
        for _ in range(12):
            n = rng.randrange(1, 30)
            w = "".join(rng.choice(chars) for _ in range(n))
            if rng.random() < 0.5:
                w = " ".join(w[i:i + rng.randrange(1, 6)] for i in range(0, len(w), 5))
            add(w)
    # support messages
    for _ in range(260):
        m = fill(rng, rng.choice(SUPPORT))
        r = rng.random()
        if r < 0.15:
            m = m.lower()
        elif r < 0.25:
            m = m.upper()
        elif r < 0.35:
            m = rng.choice(WS) + m + rng.choice(WS)
        elif r < 0.45:
            m = m + " " + rng.choice(EMOJI) * rng.randrange(1, 4)
        elif r < 0.55:
            m = m + "\n\n" + fill(rng, rng.choice(SUPPORT))
        elif r < 0.6:
            m = "Message: " + m + "\nTeam:"
        add(m)
    # random word soup with punctuation, digits and whitespace
    for _ in range(300):
        parts = []
        for _ in range(rng.randrange(1, 25)):
            r = rng.random()
            if r < 0.55:
                w = rng.choice(WORDS)
                if rng.random() < 0.2:
                    w = w.capitalize()
                parts.append(w)
            elif r < 0.65:
                parts.append(str(rng.randrange(0, 10 ** rng.randrange(1, 9))))
            elif r < 0.75:
                parts.append(rng.choice(PUNCT) * rng.randrange(1, 4))
            elif r < 0.85:
                parts.append(rng.choice(WS))
            elif r < 0.9:
                parts.append(rng.choice(EMOJI))
            elif r < 0.95:
                sc = rng.choice(list(SCRIPTS.values()))
                parts.append("".join(rng.choice(sc) for _ in range(rng.randrange(1, 6))))
            else:
                parts.append(rng.choice(NAMES))
        sep = rng.choice([" ", " ", " ", "", "\n", "  ", "\t"])
        add(sep.join(parts))
    # rare unicode (byte fallback)
    for _ in range(200):
        n = rng.randrange(1, 12)
        t = "".join(rare_char(rng) for _ in range(n))
        if rng.random() < 0.5:
            t = rng.choice(WORDS) + " " + t + " " + rng.choice(WORDS)
        add(t)
    # control characters and odd whitespace
    for _ in range(60):
        add("".join(rng.choice([chr(rng.randrange(0, 32)), chr(0x7f), " ", "a", "\u0085", "\u2028", "\u00a0"])
                    for _ in range(rng.randrange(1, 10))))
    # concatenations of random vocab pieces (exercise merges broadly)
    for _ in range(400):
        k = rng.randrange(1, 12)
        add("".join(rng.choice(vocab_pieces) for _ in range(k)))
    # user-defined tokens embedded in text (split out before SPM)
    for _ in range(250):
        parts = []
        for _ in range(rng.randrange(1, 6)):
            parts.append(rng.choice(user_defined))
            if rng.random() < 0.7:
                parts.append(rng.choice(WORDS + ["", " ", "x", "<", ">"]))
        add("".join(parts))
    # every user-defined token alone and inside text, a sample of control
    # tokens, and the texts llama.cpp re-types by name (EOG, FIM, gpt-oss)
    for u in user_defined:
        add(u)
        add("a" + u + "b " + u + u)
    for t in control_sample:
        add(t)
        add("x " + t + " y")
    for t in LLAMA_CPP_NAMED:
        add(t)
        add("before " + t + "after")
    # chat-formatted text
    for _ in range(80):
        turns = []
        for i in range(rng.randrange(1, 4)):
            role = "user" if i % 2 == 0 else "model"
            turns.append(f"<start_of_turn>{role}\n{fill(rng, rng.choice(SUPPORT))}<end_of_turn>\n")
        t = "".join(turns) + ("<start_of_turn>model\n" if rng.random() < 0.7 else "")
        if rng.random() < 0.3:
            t = "<bos>" + t
        add(t)
    # code mutations
    for _ in range(80):
        c = rng.choice(CODE)
        c = c.replace("    ", rng.choice(["  ", "\t", "    ", "        "]))
        if rng.random() < 0.5:
            c = c * rng.randrange(2, 4)
        add(c)
    # long texts
    for _ in range(30):
        add(" ".join(fill(rng, rng.choice(SUPPORT)) for _ in range(rng.randrange(10, 40))))
    # de-duplicate, keep order
    seen, out = set(), []
    for t in s:
        if t not in seen:
            seen.add(t)
            out.append(t)
    return out


# Token texts llama.cpp's vocab loader looks up by name (llama-vocab.cpp).
LLAMA_CPP_NAMED = [
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<PRE>", "<|code_prefix|>", "<|prefix|>",
    "<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<SUF>", "<|code_suffix|>", "<|suffix|>",
    "<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<MID>", "<|code_middle|>", "<|middle|>",
    "<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]", "<|fim_repo|>", "<|repo_name|>",
    "<fim-repo>", "<REPO>", "<reponame>", "<|file_sep|>", "<|channel|>", "<|message|>", "<|start|>",
    "<|constrain|>", "<s>", "<unk>", "<mask>", "[multimodal]",
]


# ---------------------------------------------------------------- llama.cpp helpers

def vocab_of(llm):
    return llm._model.vocab


def detokenize(vocab, ids):
    """llama_detokenize with remove_special=false, unparse_special=false: the
    text a user of the C API gets (control tokens render as nothing)."""
    arr = (llama_cpp.llama_token * max(1, len(ids)))(*ids)
    cap = 64 + 64 * len(ids)
    buf = ctypes.create_string_buffer(cap)
    n = llama_cpp.llama_detokenize(vocab, arr, len(ids), buf, cap, False, False)
    assert n >= 0, n
    return buf.raw[:n]


def tokenizer_fixture(model_path):
    llm = llama_cpp.Llama(model_path, vocab_only=True, verbose=False)
    vocab = vocab_of(llm)
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
    pieces, user_defined, control = [], [], []
    for i in range(n_vocab):
        attr = llama_cpp.llama_vocab_get_attr(vocab, i)
        text = llama_cpp.llama_vocab_get_text(vocab, i).decode("utf-8", "replace")
        if attr & ATTR_USER_DEFINED:
            user_defined.append(text)
        elif attr & ATTR_CONTROL:
            control.append(text)
        elif not attr & (ATTR_CONTROL | ATTR_UNKNOWN | ATTR_BYTE) and text:
            pieces.append(text.replace("\u2581", " "))
    rng = random.Random(SEED)
    control_sample = control[:12] + random.Random(SEED + 2).sample(control, 24)
    strings = make_strings(pieces, user_defined, control_sample, rng)
    path = os.path.join(OUT, "tokenizer.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        for t in strings:
            b = t.encode("utf-8")
            ids = llm.tokenize(b, add_bos=True, special=False)
            ids_sp = llm.tokenize(b, add_bos=True, special=True)
            det = detokenize(vocab, ids)
            rec = {"text": t, "ids": ids, "ids_special": ids_sp}
            try:
                rec["detok"] = det.decode("utf-8")
            except UnicodeDecodeError:
                rec["detok_hex"] = det.hex()
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    print(f"wrote {len(strings)} strings to {path} ({len(user_defined)} user-defined tokens in vocab)")


# ---------------------------------------------------------------- greedy + speed

GREEDY_PROMPTS = [
    "Message: My card was charged twice\nTeam:",
    "Message: I can't log into my account\nTeam:",
    "Message: Where is my package?\nTeam:",
    "The capital of France is",
    "1, 2, 3, 4, 5,",
    "def fibonacci(n):",
    "Once upon a time",
    "Q: What is 12 times 12?\nA:",
    "Translate to French: Good morning, how are you?\n",
    "<start_of_turn>user\nWrite a haiku about the sea.<end_of_turn>\n<start_of_turn>model\n",
    "<start_of_turn>user\nRoute this message to one of: billing, technical, account, shipping, other.\nMessage: The app crashes when I open settings.<end_of_turn>\n<start_of_turn>model\n",
    '{"name": "Alice", "age":',
    "The quick brown fox",
    "日本の首都は",
    "Hello",
    "a",
]

LONG_BASE = ("You route customer messages to the team that handles them. The teams are billing "
             "(charges, refunds, invoices, subscriptions), technical (app crashes, errors, bugs, "
             "connectivity), account (login, password, profile, security), shipping (delivery, "
             "tracking, returns, damaged items) and other (anything else). Answer with exactly one "
             "team name in lower case and nothing else.\n\n")

LONG_EXAMPLES = [
    ("I was billed twice this month", "billing"), ("The app freezes on startup", "technical"),
    ("I forgot my password", "account"), ("My parcel never arrived", "shipping"),
    ("Do you have a store in Lisbon?", "other"), ("Please refund my last payment", "billing"),
    ("Bluetooth pairing keeps failing", "technical"), ("How do I change my username?", "account"),
]


def long_prompts():
    out = []
    rng = random.Random(SEED + 1)
    queries = ["My card was charged twice", "The tracking page shows an error", "Can I get an invoice copy?",
               "Someone else logged into my account", "The box was crushed when it arrived",
               "What are your opening hours?", "Refund still not received after 10 days",
               "Wifi setup fails with code E42"]
    for q in queries:
        ex = rng.sample(LONG_EXAMPLES, 3)
        p = LONG_BASE + "".join(f"Message: {m}\nTeam: {t}\n\n" for m, t in ex) + f"Message: {q}\nTeam:"
        out.append(p)
    return out


def speed_prompt_ids(llm):
    text = (LONG_BASE + "".join(f"Message: {m}\nTeam: {t}\n\n" for m, t in LONG_EXAMPLES) * 2)
    ids = llm.tokenize(text.encode(), add_bos=True, special=False)
    assert len(ids) >= 103
    return ids[:103]


class Model:
    """The full model through llama.cpp's C API (llama-cpp-python's ctypes
    layer). The high-level `Llama` class is not used because it cannot turn
    off llama.cpp's extra weight buffer types: on the machine these fixtures
    were made on (AVX512 + AMX under a Firecracker VM) the AMX/repack buffer
    path segfaults in llama_decode, so weights stay in plain CPU buffers
    (use_extra_bufts = false), which is also what a portable build computes."""

    def __init__(self, path, n_threads=2, n_ctx=1024):
        llama_cpp.llama_backend_init()
        mp = llama_cpp.llama_model_default_params()
        mp.use_extra_bufts = False
        self.model = llama_cpp.llama_model_load_from_file(path.encode(), mp)
        assert self.model, "model load failed"
        cp = llama_cpp.llama_context_default_params()
        cp.n_ctx = n_ctx
        cp.n_batch = 512
        cp.n_ubatch = 512
        cp.n_threads = n_threads
        cp.n_threads_batch = n_threads
        cp.no_perf = False
        self.ctx = llama_cpp.llama_init_from_model(self.model, cp)
        assert self.ctx, "context init failed"
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)

    def tokenize(self, text, add_special=True, parse_special=False):
        b = text.encode("utf-8")
        cap = len(b) + 16
        buf = (llama_cpp.llama_token * cap)()
        n = llama_cpp.llama_tokenize(self.vocab, b, len(b), buf, cap, add_special, parse_special)
        assert n >= 0, n
        return list(buf[:n])

    def reset(self):
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.ctx), True)

    def decode(self, ids):
        """Evaluates `ids` (one batch) and returns the last position's logits."""
        arr = (llama_cpp.llama_token * len(ids))(*ids)
        rc = llama_cpp.llama_decode(self.ctx, llama_cpp.llama_batch_get_one(arr, len(ids)))
        assert rc == 0, rc
        p = llama_cpp.llama_get_logits_ith(self.ctx, -1)
        return np.ctypeslib.as_array(p, shape=(self.n_vocab,))


def greedy_and_speed(model_path, do_speed=True, do_greedy=True):
    m = Model(model_path)
    if do_greedy:
        greedy(m)
    if do_speed:
        speed(m, model_path)


def greedy(m):
    path = os.path.join(OUT, "greedy.jsonl")
    prompts = GREEDY_PROMPTS + long_prompts()
    with open(path, "w", encoding="utf-8") as f:
        for p in prompts:
            special = "<start_of_turn>" in p
            ids = m.tokenize(p, True, special)
            m.reset()
            logits = m.decode(ids).copy()
            gen, gen_logits, top5 = [], [], None
            for step in range(32):
                nxt = int(np.argmax(logits))
                if step == 0:
                    order = np.argsort(-logits, kind="stable")[:5]
                    top5 = [[int(i), float(logits[i])] for i in order]
                gen.append(nxt)
                gen_logits.append(float(logits[nxt]))
                logits = m.decode([nxt]).copy()
            rec = {"prompt": p, "parse_special": special, "prompt_ids": ids, "greedy_ids": gen,
                   "greedy_logits": gen_logits, "top5_first_step": top5,
                   "greedy_text": detokenize(m.vocab, gen).decode("utf-8", "replace")}
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    print(f"wrote {len(prompts)} prompts to {path}")


# The eval-shaped measure of `tunegate bench model` (crates/tunegate-cli/src/
# bench.rs, ROUTING and MESSAGES): 48 short classification prompts, each
# prefilled then greedily decoded for up to 4 tokens, stopping at a newline.
EVAL_ROUTING = ("You route customer messages to the team that handles them. The teams are billing "
                "(charges, refunds, invoices), technical (apps, devices, errors), account (sign-in, "
                "profiles, household members), shipping (deliveries, returns, damaged parcels) and other.\n\n")
EVAL_MESSAGES = [
    "I was charged twice for my March subscription.",
    "The app crashes every time I open the settings page.",
    "I forgot my password and the reset email never arrives.",
    "My package has not arrived and tracking has not moved in a week.",
    "Do you have an office in Lisbon?",
    "The invoice shows the wrong VAT number.",
    "My files stopped syncing between my laptop and phone.",
    "How do I change the email address on my account?",
    "The parcel arrived damaged and the box was soaked.",
    "Can I get a refund for the annual plan I bought yesterday?",
    "The thermostat shows error E42 after the update.",
    "Please add my partner to our household account.",
]


def eval_sequential(m, cases=48):
    """llama.cpp's per-case throughput, one case after another (no batching)."""
    nl = set(m.tokenize("\n", False, False))
    t0 = time.perf_counter()
    for i in range(cases):
        m.reset()
        ids = m.tokenize(f"{EVAL_ROUTING}Message: {EVAL_MESSAGES[i % len(EVAL_MESSAGES)]} (case {i})\nTeam:", True, False)
        logits = m.decode(ids)
        for _ in range(4):
            tok = int(np.argmax(logits))
            if tok in nl or tok == 1 or tok == 106:
                break
            logits = m.decode([tok])
    return cases / (time.perf_counter() - t0)


def speed(m, model_path):
    text = (LONG_BASE + "".join(f"Message: {q}\nTeam: {t}\n\n" for q, t in LONG_EXAMPLES) * 2)
    ids = m.tokenize(text, True, False)[:103]
    assert len(ids) == 103
    runs = []
    load_before = os.getloadavg()
    for r in range(4):  # one warm-up, then 3 measured
        m.reset()
        llama_cpp.llama_perf_context_reset(m.ctx)
        t0 = time.perf_counter()
        logits = m.decode(ids)
        t1 = time.perf_counter()
        for _ in range(64):
            logits = m.decode([int(np.argmax(logits))])
        t2 = time.perf_counter()
        perf = llama_cpp.llama_perf_context(m.ctx)
        if r > 0:
            runs.append({
                "prefill_s": t1 - t0, "decode_s": t2 - t1,
                "prefill_tok_s": len(ids) / (t1 - t0), "decode_tok_s": 64 / (t2 - t1),
                "llama_prefill_ms": perf.t_p_eval_ms, "llama_n_prefill": perf.n_p_eval,
                "llama_decode_ms": perf.t_eval_ms, "llama_n_decode": perf.n_eval,
            })
    med = lambda k: statistics.median(x[k] for x in runs)
    eval_cps = eval_sequential(m)
    out = {
        "what": "llama.cpp via llama-cpp-python %s, Gemma 3 270M Q4_K_M on CPU, n_threads=2, "
                "use_extra_bufts=false (AMX/repack path segfaults on this VM), a 103-token prompt "
                "prefilled in one batch then 64 greedy decode steps; model loaded and warmed up "
                "first; median of 3 runs. prefill_tok_s/decode_tok_s are wall-clock around "
                "llama_decode (incl. argmax over the logits); llama_* come from "
                "llama_perf_context." % llama_cpp.__version__,
        "model": os.path.basename(model_path),
        "n_threads": 2, "prompt_tokens": len(ids), "generated_tokens": 64,
        "prefill_tok_s": med("prefill_tok_s"), "decode_tok_s": med("decode_tok_s"),
        "llama_prefill_tok_s": statistics.median(x["llama_n_prefill"] / x["llama_prefill_ms"] * 1000 for x in runs),
        "llama_decode_tok_s": statistics.median(x["llama_n_decode"] / x["llama_decode_ms"] * 1000 for x in runs),
        "eval_sequential_cases_per_s": eval_cps, "eval_cases": len(EVAL_MESSAGES) * 4,
        "cpu": cpu_name(), "nproc": os.cpu_count(), "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(), "runs": runs,
    }
    path = os.path.join(OUT, "llamacpp-speed.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=2)
        f.write("\n")
    print(json.dumps({k: out[k] for k in ("prefill_tok_s", "decode_tok_s", "llama_prefill_tok_s",
                                          "llama_decode_tok_s", "eval_sequential_cases_per_s", "loadavg_before")}))


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    model = args[0] if args else default_model_path()
    os.makedirs(OUT, exist_ok=True)
    if "--greedy-only" not in sys.argv and "--speed-only" not in sys.argv:
        tokenizer_fixture(model)
    if "--tokenizer-only" not in sys.argv:
        greedy_and_speed(model, do_speed="--no-speed" not in sys.argv,
                         do_greedy="--speed-only" not in sys.argv)


if __name__ == "__main__":
    main()
