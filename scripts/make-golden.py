#!/usr/bin/env python3
"""Makes a golden file: what llama.cpp generates greedily for a list of prompts.

    scripts/make-golden.py --llama-build DIR --model MODEL.gguf --prompts PROMPTS [--out FILE.json]
        [--n-predict 32] [--ctx N] [--seed 1] [--commit HASH] [--name NAME]

DIR is a llama.cpp build folder (bin/llama-server and CMakeCache.txt); build it with
GGML_NATIVE=OFF and the flags of one ISA, so the golden belongs to that ISA and not to the
machine that made it (see models/golden/README.md). PROMPTS is a JSON array or JSON lines;
each item is a string or an object with "prompt" and optional "domain".

For every prompt it starts from a clean context (no prompt cache), tokenizes without BOS and
without parsing special tokens, and generates n_predict tokens with llama-server on one
thread, flash attention off, argmax sampling (temperature 0, no other sampler), where an
end-of-generation token does not stop generation. It then repeats the whole list on two
threads and records whether the ids were the same.

Output (the schema tests/engine/golden_test.cpp reads): model, model_sha256, source (commit,
ISA, build flags, settings), n_predict, and cases, each with domain, prompt, prompt_tokens,
tokens, text, top2_margins and same_with_2_threads. top2_margins[i] is llama.cpp's logit gap
between its first and second choice for generated token i: the server reports log-softmax
values over the whole vocabulary taken before sampling (n_probs, post_sampling_probs off), so
logprob(first) - logprob(second) = logit(first) - logit(second). It is null where the server
reports none (a token that ends inside a UTF-8 character; see run_cases).

llama.cpp's ignore_eos works by biasing end-of-generation tokens to -inf, so where such a
token has the highest logit llama.cpp picks the runner-up while an engine that merely does not
stop would pick it; the script refuses such a case (choose another prompt) rather than write
a golden no engine without that bias can match.

Python 3 standard library only.
"""

import argparse
import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

SERVER_START_TIMEOUT_S = 300
REQUEST_TIMEOUT_S = 600
MARGIN_DECIMALS = 5
# The server parses generated text with a chat-output grammar even for /completion, and that
# grammar refuses text that is not valid UTF-8, which random-weight models write all the time
# (a lone byte token). A parser that is only the empty match accepts anything; the raw
# content and the token probabilities are returned as they are.
ACCEPT_ANY_OUTPUT = json.dumps({"parsers": [{"type": "epsilon"}], "rules": {}, "root": 0})

# The build options that decide which SIMD code ggml's CPU backend compiles.
ISA_FLAGS = ["GGML_NATIVE", "GGML_SSE42", "GGML_AVX", "GGML_AVX2", "GGML_AVX_VNNI", "GGML_FMA", "GGML_F16C",
             "GGML_BMI2", "GGML_AVX512", "GGML_AVX512_VBMI", "GGML_AVX512_VNNI", "GGML_AVX512_BF16",
             "GGML_AMX_TILE", "GGML_AMX_INT8", "GGML_AMX_BF16", "GGML_LLAMAFILE", "GGML_CPU_REPACK"]


def fail(message):
    sys.exit("make-golden: " + message)


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_prompts(path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    stripped = text.lstrip()
    if stripped.startswith("["):
        items = json.loads(text)
    else:
        items = [json.loads(line) for line in text.splitlines() if line.strip()]
    prompts = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            item = {"prompt": item}
        if not isinstance(item, dict) or not isinstance(item.get("prompt"), str) or not item["prompt"]:
            fail(f"{path}: item {i} is neither a non-empty string nor an object with a \"prompt\" string")
        prompts.append(item)
    if not prompts:
        fail(f"{path}: no prompts")
    return prompts


def build_info(build_dir):
    """(isa, [flag=value...]) from the build folder's CMakeCache.txt."""
    cache = os.path.join(build_dir, "CMakeCache.txt")
    values = {}
    try:
        with open(cache, encoding="utf-8") as f:
            for line in f:
                name, sep, value = line.strip().partition("=")
                if sep and ":" in name:
                    values[name.split(":")[0]] = value
    except OSError as e:
        fail(f"cannot read {cache}: {e}")
    on = lambda key: values.get(key, "").upper() in ("ON", "1", "TRUE", "YES")
    flags = [f"{k}={values[k]}" for k in ISA_FLAGS if k in values]
    if on("GGML_NATIVE"):
        isa = "native"
    elif on("GGML_AVX512"):
        isa = "avx512"
    elif on("GGML_AVX2"):
        isa = "avx2"
    else:
        isa = "scalar"
    return isa, flags


def llama_version(server):
    out = subprocess.run([server, "--version"], capture_output=True, text=True).stderr
    for line in out.splitlines():
        if line.startswith("version:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class server:
    """llama-server on one model, for the lifetime of a `with` block."""

    def __init__(self, binary, model, threads, ctx, seed, log_dir):
        self.port = free_port()
        self.log_path = os.path.join(log_dir, f"llama-server-t{threads}.log")
        self.args = [binary, "-m", model, "--host", "127.0.0.1", "--port", str(self.port),
                     "-t", str(threads), "-tb", str(threads), "-fa", "off", "-np", "1", "--seed", str(seed),
                     "--no-webui", "--cache-ram", "0", "--no-warmup"]
        if ctx:
            self.args += ["-c", str(ctx)]

    def __enter__(self):
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(self.args, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                fail(f"llama-server exited with {self.proc.returncode}; see {self.log_path}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=5) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.5)
        self.proc.kill()
        fail(f"llama-server did not become healthy in {SERVER_START_TIMEOUT_S} s; see {self.log_path}")

    def __exit__(self, *exc):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()

    def post(self, path, body):
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=REQUEST_TIMEOUT_S) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            fail(f"{path} answered {e.code}: {e.read().decode(errors='replace')}")

    def tokenize(self, text):
        return self.post("/tokenize", {"content": text, "add_special": False, "parse_special": False})["tokens"]

    def generate(self, prompt_tokens, n_predict, seed):
        return self.post("/completion", {
            "prompt": prompt_tokens, "n_predict": n_predict, "cache_prompt": False, "seed": seed,
            "samplers": ["temperature"], "temperature": 0.0, "ignore_eos": True,
            "n_probs": 2, "post_sampling_probs": False, "stream": False,
            "chat_parser": ACCEPT_ANY_OUTPUT, "return_tokens": True,
        })


def run_cases(srv, prompts, n_predict, seed):
    cases = []
    for item in prompts:
        prompt_tokens = srv.tokenize(item["prompt"])
        if not prompt_tokens:
            fail(f"prompt tokenizes to nothing: {item['prompt']!r}")
        out = srv.generate(prompt_tokens, n_predict, seed)
        tokens = out.get("tokens")
        probs = out.get("completion_probabilities")
        if not isinstance(tokens, list) or len(tokens) != n_predict or not isinstance(probs, list):
            fail(f"expected {n_predict} tokens, got {len(tokens or [])} for {item['prompt']!r}")
        # A token after which the text ends inside a UTF-8 sequence (a lone byte of a
        # multi-byte character) is held back with its text and gets no probabilities of its
        # own; its margin is unknown (null), which the golden test treats as "not a near-tie".
        # Such a token never has the id of the token that completes the character (it would
        # leave the text incomplete again), so matching ids in order pairs them up.
        margins = []
        j = 0
        for i, tok in enumerate(tokens):
            if j < len(probs) and probs[j]["id"] == tok:
                top = probs[j]["top_logprobs"]
                if len(top) < 2:
                    fail(f"token {i}: fewer than 2 candidates reported")
                if top[0]["id"] != tok:
                    fail(f"token {i} of {item['prompt']!r}: the highest logit is token {top[0]['id']} "
                         f"({top[0]['token']!r}, an end-of-generation token biased away by ignore_eos) but "
                         f"llama.cpp picked {tok}; choose another prompt")
                margins.append(round(top[0]["logprob"] - top[1]["logprob"], MARGIN_DECIMALS))
                j += 1
            else:
                margins.append(None)
        if j != len(probs):
            fail(f"{len(probs) - j} reported probabilities match no generated token for {item['prompt']!r}")
        case = {}
        if "domain" in item:
            case["domain"] = item["domain"]
        case.update({"prompt": item["prompt"], "prompt_tokens": prompt_tokens, "tokens": tokens,
                     "text": out["content"], "top2_margins": margins})
        cases.append(case)
    return cases


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--llama-build", required=True, help="llama.cpp build folder (bin/llama-server, CMakeCache.txt)")
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompts", required=True, help="JSON array or JSON lines of prompts")
    ap.add_argument("--out", help="output file (default: stdout)")
    ap.add_argument("--n-predict", type=int, default=32)
    ap.add_argument("--ctx", type=int, default=0, help="context size (default: the model's)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--commit", help="llama.cpp commit to record (default: what llama-server --version says)")
    ap.add_argument("--name", help="model name to record (default: the file's name)")
    args = ap.parse_args()

    binary = os.path.join(args.llama_build, "bin", "llama-server")
    if not os.access(binary, os.X_OK):
        fail(f"{binary} is not an executable")
    if not os.path.isfile(args.model):
        fail(f"{args.model} is not a file")
    if args.n_predict <= 0:
        fail("--n-predict must be positive")
    prompts = read_prompts(args.prompts)
    isa, flags = build_info(args.llama_build)
    if isa == "native":
        print("make-golden: warning: GGML_NATIVE=ON, so the ISA is whatever the build machine had", file=sys.stderr)
    commit = args.commit or llama_version(binary)

    with tempfile.TemporaryDirectory(prefix="make-golden-") as logs:
        with server(binary, args.model, 1, args.ctx, args.seed, logs) as srv:
            cases = run_cases(srv, prompts, args.n_predict, args.seed)
        with server(binary, args.model, 2, args.ctx, args.seed, logs) as srv:
            cases2 = run_cases(srv, prompts, args.n_predict, args.seed)
    for c, c2 in zip(cases, cases2):
        c["same_with_2_threads"] = c["tokens"] == c2["tokens"]

    golden = {
        "model": args.name or os.path.basename(args.model),
        "model_sha256": sha256_of(args.model),
        "source": (f"llama.cpp {commit}, CPU {isa} ({' '.join(flags)}), llama-server, greedy (argmax), 1 thread, "
                   f"flash attention off, weight repacking default, no prompt cache, EOG not stopping"),
        "n_predict": args.n_predict,
        "cases": cases,
    }
    text = json.dumps(golden, indent=1, ensure_ascii=False) + "\n"
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    exact = sum(1 for c in cases if c["same_with_2_threads"])
    print(f"make-golden: {len(cases)} cases, {exact} the same on 2 threads, ISA {isa}", file=sys.stderr)


if __name__ == "__main__":
    main()
