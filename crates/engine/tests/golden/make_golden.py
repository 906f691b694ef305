#!/usr/bin/env python3
"""Golden data for the engine's correctness tests, made with Hugging Face transformers on CPU in float32.

Loads the default GGUF (SmolLM2-135M-Instruct, Q4_1) exactly as transformers does — dequantized to f32 — and records,
for each prompt: the prompt ids, 48 greedy tokens (EOS ignored so every prompt yields 48), the top-1/top-2 logit margin
at every step (to tell a near-tie from a bug), and the full logits at the first generated position.

Usage: python make_golden.py /path/to/SmolLM2-135M-Instruct.Q4_1.gguf
Writes golden.json and logits_<name>.f32 (little-endian f32, vocab entries) beside this script.
"""
import json
import os
import sys

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

NEW_TOKENS = 48
HERE = os.path.dirname(os.path.abspath(__file__))


def long_text():
    parts = []
    topics = [
        ("the printing press", "Johannes Gutenberg", "1440", "books became cheap enough for ordinary readers"),
        ("the steam engine", "James Watt", "1776", "factories no longer had to stand beside rivers"),
        ("the telegraph", "Samuel Morse", "1837", "news crossed continents in minutes instead of weeks"),
        ("the telephone", "Alexander Graham Bell", "1876", "voices could travel along copper wires"),
        ("the light bulb", "Thomas Edison", "1879", "cities stayed awake long after sunset"),
        ("the airplane", "the Wright brothers", "1903", "oceans became a matter of hours to cross"),
        ("the transistor", "Bardeen, Brattain and Shockley", "1947", "radios shrank to fit in a pocket"),
        ("the integrated circuit", "Jack Kilby", "1958", "thousands of switches fit on a sliver of silicon"),
        ("the World Wide Web", "Tim Berners-Lee", "1989", "anyone could publish a page for the whole planet"),
    ]
    for i, (thing, who, year, effect) in enumerate(topics[:6], 1):
        parts.append(
            f"Chapter {i}. In {year}, {who} gave the world {thing}. At first few people understood what it meant, "
            f"and many critics called it a passing curiosity. Within a generation, however, {effect}. Historians "
            f"still argue about whether {thing} changed society by itself, or whether it merely sped up changes that "
            f"were already under way. Either way, the story of {thing} shows how a single idea can spread from a "
            f"workshop to every corner of daily life."
        )
    parts.append("Question: which of these inventions mattered most, and why? Answer:")
    return "\n\n".join(parts)


PROMPTS = [
    {"name": "short", "text": "The capital of France is"},
    {"name": "code", "text": "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"},
    {"name": "long", "text": long_text()},
    {"name": "chat", "messages": [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]},
    {"name": "chat_system", "messages": [
        {"role": "system", "content": "You are a terse assistant who answers with lists."},
        {"role": "user", "content": "Name three primary colors."},
    ]},
    {"name": "numbers", "text": "1, 2, 3, 4, 5, 6, 7, 8,"},
]


def main():
    gguf_path = sys.argv[1]
    torch.manual_seed(0)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    d, f = os.path.split(os.path.abspath(gguf_path))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    model.eval()
    out = {"model": f, "new_tokens": NEW_TOKENS, "prompts": []}
    for p in PROMPTS:
        if "messages" in p:
            text = tok.apply_chat_template(p["messages"], tokenize=False, add_generation_prompt=True)
        else:
            text = p["text"]
        ids = tok(text, add_special_tokens=True)["input_ids"]
        input_ids = torch.tensor([ids])
        margins, output = [], []
        with torch.no_grad():
            res = model(input_ids, use_cache=True)
            past = res.past_key_values
            logits = res.logits[0, -1].float()
            first_logits = logits.numpy().astype("<f4")
            for _ in range(NEW_TOKENS):
                top2 = torch.topk(logits, 2)
                margins.append(float(top2.values[0] - top2.values[1]))
                nxt = int(top2.indices[0])
                output.append(nxt)
                res = model(torch.tensor([[nxt]]), past_key_values=past, use_cache=True)
                past = res.past_key_values
                logits = res.logits[0, -1].float()
        first_logits.tofile(os.path.join(HERE, f"logits_{p['name']}.f32"))
        entry = {"name": p["name"], "text": text, "prompt_ids": ids, "output_ids": output,
                 "output_text": tok.decode(output), "margins": margins}
        if "messages" in p:
            entry["messages"] = p["messages"]
        out["prompts"].append(entry)
        print(p["name"], len(ids), "prompt tokens; min margin %.4f" % min(margins), repr(tok.decode(output))[:80])
    with open(os.path.join(HERE, "golden.json"), "w") as fh:
        json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
