#!/usr/bin/env python3
"""Compares cleave's CUDA logits with transformers on the same GPU and the same weights.

Usage: gpu_reference_check.py DIR, where DIR was written by
`cleave bench --device cuda --model synthetic:<shape> --reference-dir DIR` (config.json, model.safetensors,
prompt.json, logits.f32). Loads the checkpoint with transformers in bf16 on CUDA, runs the prompt, and compares the
last position's logits: prints the error against the logit range, and fails when it exceeds the bf16 tolerance or
the top token differs while cleave's top-2 margin is clear.
"""
import json
import sys

import numpy as np
import torch
from transformers import AutoModelForCausalLM

d = sys.argv[1]
prompt = json.load(open(f"{d}/prompt.json"))
ours = np.fromfile(f"{d}/logits.f32", dtype="<f4")
model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.bfloat16).cuda().eval()
with torch.no_grad():
    out = model(torch.tensor([prompt], device="cuda")).logits[0, -1].float().cpu().numpy()
assert out.shape == ours.shape, (out.shape, ours.shape)
span = float(out.max() - out.min())
err = np.abs(out - ours)
top_ours, top_ref = int(ours.argmax()), int(out.argmax())
srt = np.sort(ours)
margin = float(srt[-1] - srt[-2])
print(f"logits: max |diff| {err.max():.4f}, mean {err.mean():.4f}, range {span:.3f} "
      f"-> max error {100 * err.max() / span:.2f}% of range; top token cleave {top_ours} transformers {top_ref} "
      f"(cleave's top-2 margin {margin:.4f})")
ok = err.max() <= 0.03 * span and (top_ours == top_ref or margin < 0.02 * span)
print("reference check:", "PASS" if ok else "FAIL")
sys.exit(0 if ok else 1)
