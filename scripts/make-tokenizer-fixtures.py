#!/usr/bin/env python3
"""Makes the tokenizer fixtures: llama.cpp's ids for every test string, per vocabulary.

    scripts/make-tokenizer-fixtures.py --llama-src DIR [--llama-build DIR] [--commit HASH]

DIR is a llama.cpp checkout (include/, ggml/include/) and a build of it (bin/libllama.so;
default DIR/build-avx2). The script compiles scripts/llama-tokenize-batch.cpp against that
build, then tokenizes every string of tests/engine/fixtures/tokenizer/inputs.json with
add_special = false, without and with special-token parsing, and writes
tests/engine/fixtures/tokenizer/<set>.json for each set below.

The sets: the real Llama-2 / Mixtral SentencePiece vocabulary (models/tokenizer/
llama-spm-vocab.gguf, llama.cpp's models/ggml-vocab-llama-spm.gguf), and the Qwen3 byte-level
BPE vocabulary (models/tokenizer/qwen3-vocab.gguf) under each pre-tokenizer name moed
supports for the MoE models it runs. llama.cpp reads the Qwen3 file with tokenizer.ggml.pre
replaced through its metadata override, which is what a copy of the file with that one value
changed gives it; tests/engine/tokenizer_fixture_test.cpp writes such a copy for moed. The
pre-tokenizer is what differs between the sets, so a vocabulary that covers every script is
enough to compare splits.

Each case: text (or text_hex for bytes that are not valid UTF-8); ids and ids_special (with
special-token parsing); pieces_hex and pieces_special_hex, the concatenated
llama_token_to_piece bytes of those ids (what a stream of the tokens prints, control tokens
only in the special form); round_trips and round_trips_special, whether llama_detokenize
(remove_special false, unparse_special as the ids) gives the text back.

The id-level sets cannot show every split: a vocabulary's merges often rebuild the same
tokens across a word boundary (Qwen3's digits are single tokens, so digit grouping never
shows). So splits.json holds, per pre-tokenizer name, the words llama.cpp's pre-tokenizer
itself (unicode_regex_split) makes of every input: the expressions are read out of
llama.cpp's src/llama-vocab.cpp (the regex_exprs list of the pre type the name selects), and
each case records the byte length of every word, plus the text the words cover as hex where
llama.cpp repaired invalid UTF-8 first.

Python 3 standard library only; a C++17 compiler (g++ or $CXX).
"""

import argparse
import hashlib
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "engine" / "fixtures" / "tokenizer"
HELPER = ROOT / "scripts" / "llama-tokenize-batch.cpp"

LLAMA_SPM = ROOT / "models" / "tokenizer" / "llama-spm-vocab.gguf"
QWEN3 = ROOT / "models" / "tokenizer" / "qwen3-vocab.gguf"
# (set name, vocabulary, tokenizer.ggml.pre for llama.cpp or None to keep the file's)
SETS = [("llama-spm", LLAMA_SPM, None)] + [
    ("qwen3-" + pre, QWEN3, pre)
    for pre in ["gpt-4o", "glm4", "deepseek-llm", "deepseek-coder", "kimi-k2", "deepseek-v3", "qwen2", "llama3",
                "gpt-2", "default"]
]

# Pre-tokenizer name -> llama.cpp's LLAMA_VOCAB_PRE_TYPE_<...> (None: its default expressions).
PRE_TYPES = {
    "gpt-4o": "GPT4O", "glm4": "CHATGLM4", "deepseek-llm": "DEEPSEEK_LLM", "deepseek-coder": "DEEPSEEK_CODER",
    "kimi-k2": "KIMI_K2", "deepseek-v3": "DEEPSEEK3_LLM", "qwen2": "QWEN2", "llama3": "LLAMA3", "gpt-2": "GPT2",
    "default": None,
}


def fail(message):
    sys.exit("make-tokenizer-fixtures: " + message)


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def compile_helper(src, build, out):
    cxx = os.environ.get("CXX", "g++")
    lib = build / "bin"
    if not (lib / "libllama.so").exists():
        fail(f"{lib}/libllama.so not found (build llama.cpp with shared libraries)")
    cmd = [cxx, "-std=c++17", "-O1", "-o", str(out), str(HELPER), f"-I{src / 'include'}", f"-I{src / 'src'}",
           f"-I{src / 'ggml' / 'include'}", f"-L{lib}", "-lllama", "-lggml", "-lggml-base",
           f"-Wl,-rpath,{lib}"]
    subprocess.run(cmd, check=True)


def c_string(literal):
    """The bytes of a C++ string literal's body (the escapes llama-vocab.cpp uses)."""
    out = bytearray()
    raw = literal.encode("utf-8")
    i = 0
    escapes = {ord("\\"): b"\\", ord('"'): b'"', ord("n"): b"\n", ord("r"): b"\r", ord("t"): b"\t", ord("'"): b"'"}
    while i < len(raw):
        if raw[i] == ord("\\"):
            if raw[i + 1] not in escapes:
                fail(f"unexpected escape in {literal!r}")
            out += escapes[raw[i + 1]]
            i += 2
        else:
            out.append(raw[i])
            i += 1
    return bytes(out)


def pre_expressions(vocab_cpp, pre_type):
    """The regex_exprs list llama.cpp's BPE tokenizer uses for LLAMA_VOCAB_PRE_TYPE_<pre_type>."""
    src = vocab_cpp.read_text(encoding="utf-8")
    label = f"case LLAMA_VOCAB_PRE_TYPE_{pre_type}:" if pre_type else "default:\n                // default regex"
    at = src.find(label, src.find("struct llm_tokenizer_bpe : llm_tokenizer"))
    if at < 0:
        fail(f"{vocab_cpp}: no '{label}' in llm_tokenizer_bpe")
    begin = src.find("regex_exprs = {", at)
    end = src.find("};", begin)
    body = "\n".join(line for line in src[begin:end].splitlines() if not line.strip().startswith("//"))
    exprs = [c_string(m) for m in re.findall(r'"((?:[^"\\]|\\.)*)"', body)]
    if not exprs:
        fail(f"{vocab_cpp}: no expressions for {label}")
    return exprs


def records(items):
    return b"".join(str(len(b)).encode() + b"\n" + b for b in items)


def run_splits(helper, vocab_cpp, cases, tmp):
    out = {}
    for pre, pre_type in PRE_TYPES.items():
        exprs = pre_expressions(vocab_cpp, pre_type)
        path = pathlib.Path(tmp) / "expressions"
        path.write_bytes(records(exprs))
        done = subprocess.run([str(helper), "--split", str(path)], input=records(map(case_bytes, cases)),
                              capture_output=True, check=False)
        if done.returncode != 0:
            fail(f"splitting with {pre}: {done.stderr.decode(errors='replace').strip()}")
        lines = done.stdout.decode().splitlines()
        if len(lines) != len(cases):
            fail(f"splitting with {pre}: {len(lines)} result lines for {len(cases)} cases")
        results = []
        for case, line in zip(cases, lines):
            words = [bytes.fromhex(h) for h in line.split()[1:]]
            entry = {"lengths": [len(w) for w in words]}
            if b"".join(words) != case_bytes(case):
                entry["covers_hex"] = b"".join(words).hex()
            results.append(entry)
        out[pre] = {"llama_cpp_pre_type": pre_type or "DEFAULT",
                    "expressions": [e.decode("utf-8") for e in exprs], "cases": results}
    return out


def case_bytes(case):
    return bytes.fromhex(case["text_hex"]) if "text_hex" in case else case["text"].encode("utf-8")


def run_set(helper, vocab, pre, cases):
    done = subprocess.run([str(helper), str(vocab), pre or "-"], input=records(map(case_bytes, cases)),
                          capture_output=True, check=False)
    if done.returncode != 0:
        fail(f"{vocab} (pre {pre}): {done.stderr.decode(errors='replace').strip()}")
    lines = done.stdout.decode().splitlines()
    if len(lines) != 2 * len(cases):
        fail(f"{vocab} (pre {pre}): {len(lines)} result lines for {len(cases)} cases")
    out = []
    for i, case in enumerate(cases):
        text = case_bytes(case)
        entry = {"text_hex": case["text_hex"]} if "text_hex" in case else {"text": case["text"]}
        for line, suffix in ((lines[2 * i], ""), (lines[2 * i + 1], "_special")):
            ids_part, detok_part, pieces_part = line.split("|")
            entry["ids" + suffix] = [int(x) for x in ids_part.split()[1:]]
            entry["round_trips" + suffix] = bytes.fromhex(detok_part.split(" ", 1)[1].strip()) == text
            entry["pieces" + suffix + "_hex"] = pieces_part.split(" ", 1)[1].strip()
        out.append(entry)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--llama-src", required=True, type=pathlib.Path)
    ap.add_argument("--llama-build", type=pathlib.Path)
    ap.add_argument("--commit", help="llama.cpp commit to record (default: git rev-parse of --llama-src)")
    args = ap.parse_args()
    build = args.llama_build or args.llama_src / "build-avx2"
    commit = args.commit
    if commit is None:
        commit = subprocess.run(["git", "-C", str(args.llama_src), "rev-parse", "--short=12", "HEAD"],
                                capture_output=True, text=True, check=True).stdout.strip()
    cases = json.loads((FIXTURES / "inputs.json").read_text(encoding="utf-8"))["cases"]
    with tempfile.TemporaryDirectory() as tmp:
        helper = pathlib.Path(tmp) / "llama-tokenize-batch"
        compile_helper(args.llama_src, build, helper)
        for name, vocab, pre in SETS:
            results = run_set(helper, vocab, pre, cases)
            doc = {
                "vocab": vocab.name,
                "vocab_sha256": sha256_of(vocab),
                "pre": pre,
                "source": f"llama.cpp {commit} (llama_tokenize, add_special false; scripts/make-tokenizer-fixtures.py)",
                "cases": results,
            }
            path = FIXTURES / (name + ".json")
            path.write_text(json.dumps(doc, ensure_ascii=False, separators=(",", ":")).replace('},{"', '},\n{"') + "\n",
                            encoding="utf-8")
            print(f"{path.relative_to(ROOT)}: {len(results)} cases")
        splits = {
            "source": f"llama.cpp {commit} unicode_regex_split (scripts/make-tokenizer-fixtures.py); cases in the "
                      "order of inputs.json; lengths: bytes of each word",
            "pre": run_splits(helper, args.llama_src / "src" / "llama-vocab.cpp", cases, tmp),
        }
        path = FIXTURES / "splits.json"
        text = json.dumps(splits, ensure_ascii=False, separators=(",", ":"))
        path.write_text(text.replace(',{"lengths"', ',\n{"lengths"') + "\n", encoding="utf-8")
        print(f"{path.relative_to(ROOT)}: {len(PRE_TYPES)} pre-tokenizers")


if __name__ == "__main__":
    main()
