"""The official `openai` SDK against relais's built-in model (real inference, SmolLM2)."""

import json

import openai
import pytest
from openai import OpenAI

from conftest import CLIENT_KEY


@pytest.fixture
def client(relais_url):
    return OpenAI(base_url=f"{relais_url}/v1", api_key=CLIENT_KEY, max_retries=0, timeout=120)


def test_sdk_streams_from_the_local_model(client):
    stream = client.chat.completions.create(
        model="local",
        messages=[{"role": "user", "content": "Explain in a few sentences why the sky is blue."}],
        stream=True,
        stream_options={"include_usage": True},
        temperature=0,
        max_tokens=24,
    )
    text, usage, finish, chunks = "", None, None, 0
    for chunk in stream:
        chunks += 1
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            text += c.delta.content or ""
            finish = c.finish_reason or finish
    assert chunks > 3, "tokens must stream, not arrive in one chunk"
    assert "Rayleigh" in text
    assert finish in ("stop", "length")
    assert usage.prompt_tokens > 20 and 0 < usage.completion_tokens <= 24


def test_greedy_is_deterministic_and_max_tokens_is_length(client):
    def ask():
        return client.chat.completions.create(
            model="local",
            messages=[{"role": "user", "content": "Name three colors."}],
            temperature=0,
            max_tokens=6,
        )

    a, b = ask(), ask()
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.choices[0].finish_reason == "length"
    assert a.usage.completion_tokens == 6


def test_json_mode_on_the_local_model(client):
    r = client.chat.completions.create(
        model="local",
        messages=[{"role": "user", "content": "Give me a JSON object describing a dog with a name and an age."}],
        response_format={"type": "json_object"},
        temperature=0,
        max_tokens=200,
    )
    # The grammar makes every token valid JSON so far; the model closes the object itself.
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(r.choices[0].message.content), dict)


def test_local_model_facts_in_models_list(client):
    local = next(m for m in client.models.list() if m.id == "local").model_dump()
    assert local["owned_by"] == "relais"
    assert local["architecture"] == "llama"
    assert local["quantization"] == "Q4_1"
    assert local["context_length"] == 2048


def test_tools_are_refused_clearly(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="local",
            messages=[{"role": "user", "content": "hi"}],
            tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        )
    assert "tools" in str(info.value)
