"""The official `openai` Python client against a cleave router's HTTP API, streaming and not.

Usage: client.py BASE_URL API_KEY MODEL. Exits non-zero on the first failed check; prints one JSON summary line.
Run by services/router/tests/http/openai.rs with the interpreter scripts/test installs (target/pyenv).
"""

import json
import sys

import openai

base_url, api_key, model = sys.argv[1], sys.argv[2], sys.argv[3]
client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=60)
QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
summary = {}

# Models.
models = [m.id for m in client.models.list()]
assert models == [model], models
assert client.models.retrieve(model).id == model

# Completions, whole and streamed (with the usage chunk).
done = client.completions.create(model=model, prompt="The capital of France is", max_tokens=8, temperature=0,
                                 logprobs=2)
text = done.choices[0].text
assert text.startswith(" Paris"), text
assert done.choices[0].finish_reason == "length", done.choices[0].finish_reason
assert done.usage.completion_tokens == 8 and done.usage.prompt_tokens == 5, done.usage
assert len(done.choices[0].logprobs.tokens) == 8
assert "".join(done.choices[0].logprobs.tokens) == text
streamed, usage = [], None
for chunk in client.completions.create(model=model, prompt="The capital of France is", max_tokens=8,
                                       temperature=0, stream=True, stream_options={"include_usage": True}):
    if chunk.choices:
        streamed.append(chunk.choices[0].text)
    if chunk.usage is not None:
        usage = chunk.usage
assert "".join(streamed) == text, (streamed, text)
assert usage is not None and usage.completion_tokens == 8, usage
summary["completion"] = text

# Chat, whole (with logprobs) and streamed.
chat = client.chat.completions.create(model=model, messages=QUESTION, max_tokens=12, temperature=0,
                                      logprobs=True, top_logprobs=2)
answer = chat.choices[0].message.content
assert answer == "The capital of France is Paris.", answer
assert chat.choices[0].message.role == "assistant"
assert chat.usage.prompt_tokens == 42, chat.usage
first = chat.choices[0].logprobs.content[0]
assert first.token == "The" and len(first.top_logprobs) == 2, first
pieces, roles, usage = [], [], None
for chunk in client.chat.completions.create(model=model, messages=QUESTION, max_completion_tokens=12,
                                            temperature=0, stream=True, stream_options={"include_usage": True}):
    for choice in chunk.choices:
        if choice.delta.role:
            roles.append(choice.delta.role)
        if choice.delta.content:
            pieces.append(choice.delta.content)
    if chunk.usage is not None:
        usage = chunk.usage
assert "".join(pieces) == answer, pieces
assert roles == ["assistant"], roles
assert usage.prompt_tokens == 42 and usage.total_tokens == 42 + usage.completion_tokens, usage
summary["chat"] = answer

# n samples with a seed, a stop string, max_completion_tokens.
a = client.chat.completions.create(model=model, messages=QUESTION, n=2, seed=11, temperature=1.0, max_tokens=6)
b = client.chat.completions.create(model=model, messages=QUESTION, n=2, seed=11, temperature=1.0, max_tokens=6)
assert len(a.choices) == 2 and [c.index for c in a.choices] == [0, 1]
assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
stopped = client.chat.completions.create(model=model, messages=QUESTION, max_tokens=12, temperature=0,
                                         stop=[" Paris"])
assert stopped.choices[0].message.content == "The capital of France is", stopped.choices[0].message.content
assert stopped.choices[0].finish_reason == "stop"
capped = client.chat.completions.create(model=model, messages=QUESTION, max_completion_tokens=3, temperature=0)
assert capped.usage.completion_tokens == 3 and capped.choices[0].finish_reason == "length"

# Errors surface as the client's typed exceptions, with OpenAI's fields.
try:
    client.chat.completions.create(model=model, messages=QUESTION, temperature=-1)
    raise AssertionError("temperature -1 was accepted")
except openai.BadRequestError as e:
    assert e.status_code == 400 and e.param == "temperature", (e.status_code, e.param)
try:
    client.chat.completions.create(model="gpt-9", messages=QUESTION)
    raise AssertionError("an unknown model was accepted")
except openai.NotFoundError as e:
    assert e.code == "model_not_found", e.code
try:
    openai.OpenAI(base_url=base_url, api_key="wrong", max_retries=0).models.list()
    raise AssertionError("a wrong API key was accepted")
except openai.AuthenticationError as e:
    assert e.status_code == 401
summary["errors"] = "ok"
summary["openai_version"] = openai.__version__
print(json.dumps(summary))
