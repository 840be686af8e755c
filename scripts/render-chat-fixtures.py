#!/usr/bin/env python3
"""Renders the chat-template fixtures that tests/engine/chat_template_test.cpp compares moed with.

For every <name>.jinja in tests/engine/fixtures/chat/ and every conversation in cases.json
there, the template is rendered as Hugging Face transformers renders a model's
tokenizer.chat_template (a sandboxed Jinja environment with trim_blocks and lstrip_blocks,
the loopcontrols extension, raise_exception, strftime_now and a tojson that keeps
non-ASCII text) and written to <name>.<case>.txt, or, when the template raises, its message
to <name>.<case>.error. Like llama.cpp, moed passes enable_thinking to every template.

The templates are the models' own, as published in their tokenizer_config.json:
  chatml                         the plain ChatML template (OpenHermes-2.5 and many others)
  qwen2-instruct                 Qwen2-7B-Instruct / Qwen2-57B-A14B-Instruct
  qwen2.5, qwen3                 llama.cpp models/templates: Qwen2.5-7B-Instruct, Qwen3-0.6B
                                 (Qwen3-30B-A3B and Qwen3-235B-A22B carry the same)
  mixtral-8x7b-instruct-v0.1-original   Mixtral-8x7B-Instruct-v0.1 as first published
  mixtral-8x7b-instruct-v0.1     its later template with a system message (Mistral's "v1")
  mistral-large-2407             Mistral's "v3" (as Mixtral-8x22B's tokenizer)
  mistral-nemo-2407              Mistral's "v3-tekken" (llama.cpp models/templates)
  mistral-large-2411             Mistral's "v7"
  gpt-oss                        openai/gpt-oss-120b (harmony; gpt-oss-20b carries the same)
  glm-4.6, glm-4.7-flash         zai-org (GLM-4.5 shares GLM-4.6's format)
  deepseek-v3.1                  deepseek-ai/DeepSeek-V3.1
  deepseek-r1                    DeepSeek-R1 (as its Distill-Llama-8B carries it)
  deepseek-r1-distill-qwen       llama.cpp's copy of R1-Distill-Qwen-32B's (closes <think> when
                                 thinking is off)
  llama-cpp-deepseek-r1          llama.cpp's fixed R1 template

Run it after adding a template or a case:  python3 scripts/render-chat-fixtures.py
CI does not run it; the C++ test reads what it wrote.
"""

import datetime
import json
import pathlib
import sys

import jinja2
import jinja2.ext
import jinja2.sandbox

FIXTURES = pathlib.Path(__file__).resolve().parent.parent / "tests" / "engine" / "fixtures" / "chat"

# bos_token and eos_token as each model's tokenizer has them (the templates that print them).
SPECIAL_TOKENS = {
    "mixtral": ("<s>", "</s>"),
    "mistral": ("<s>", "</s>"),
    "deepseek": ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"),
    "llama-cpp-deepseek": ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"),
}


class TemplateRaised(Exception):
    pass


def special_tokens(name):
    for prefix, tokens in SPECIAL_TOKENS.items():
        if name.startswith(prefix):
            return tokens
    return ("", "<|endoftext|>")


def environment(today):
    def raise_exception(message):
        raise TemplateRaised(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    def strftime_now(fmt):
        return today.strftime(fmt)

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                       extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def main():
    spec = json.loads((FIXTURES / "cases.json").read_text(encoding="utf-8"))
    today = datetime.datetime.strptime(spec["date"], "%Y-%m-%d")
    env = environment(today)
    for old in list(FIXTURES.glob("*.txt")) + list(FIXTURES.glob("*.error")):
        old.unlink()
    written = 0
    for path in sorted(FIXTURES.glob("*.jinja")):
        name = path.stem
        template = env.from_string(path.read_text(encoding="utf-8"))
        bos, eos = special_tokens(name)
        for case in spec["cases"]:
            context = {
                "messages": case["messages"],
                "add_generation_prompt": case["add_generation_prompt"],
                "bos_token": bos,
                "eos_token": eos,
                "enable_thinking": case.get("enable_thinking", True),
            }
            if "reasoning_effort" in case:
                context["reasoning_effort"] = case["reasoning_effort"]
            stem = f"{name}.{case['name']}"
            try:
                text = template.render(**context)
            except TemplateRaised as e:
                (FIXTURES / f"{stem}.error").write_text(str(e) + "\n", encoding="utf-8")
            else:
                # newline="" keeps "\r" and "\n" as rendered; the test compares bytes.
                with open(FIXTURES / f"{stem}.txt", "w", encoding="utf-8", newline="") as f:
                    f.write(text)
            written += 1
    print(f"wrote {written} renderings to {FIXTURES}", file=sys.stderr)


if __name__ == "__main__":
    main()
