"""The official `openai` Python SDK against relais in front of the mock vendor."""

import json

import openai
import pytest
from openai import AzureOpenAI, OpenAI
from pydantic import BaseModel

from conftest import AZURE_API_VERSION, CLIENT_KEY, UPSTREAM_KEY

HELLO = [{"role": "user", "content": "hi there"}]


@pytest.fixture
def client(relais_url):
    return OpenAI(base_url=f"{relais_url}/v1", api_key=CLIENT_KEY, max_retries=0)


def test_chat_non_streaming(client, mock):
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HELLO)
    assert raw.headers["x-request-id"]
    assert float(raw.headers["x-relais-overhead-ms"]) >= 0
    r = raw.parse()
    assert r.choices[0].message.content == "Hello from mock! You said: hi there"
    assert r.choices[0].finish_reason == "stop"
    assert r.model == "gpt-4o-mini"
    assert r.usage.prompt_tokens == 3 and r.usage.completion_tokens == 7
    assert mock.requests()[0]["headers"]["authorization"] == f"Bearer {UPSTREAM_KEY}"


def test_chat_streaming_with_usage(client):
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    text, usage, finish = "", None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            text += c.delta.content or ""
            finish = c.finish_reason or finish
    assert text == "Hello from mock! You said: hi there"
    assert finish == "stop"
    assert usage.completion_tokens == 7


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    },
    {
        "type": "function",
        "function": {"name": "get_time", "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}}},
    },
]


def test_streamed_tool_calls_reassembled_by_the_sdk(client):
    with client.chat.completions.stream(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "weather and time?"}], tools=TOOLS
    ) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    calls = final.choices[0].message.tool_calls
    assert [c.function.name for c in calls] == ["get_weather", "get_time"]
    assert json.loads(calls[0].function.arguments) == {"city": "mock"}
    assert json.loads(calls[1].function.arguments) == {"tz": "mock"}
    assert final.choices[0].finish_reason == "tool_calls"

    # Round trip: send the calls and a result back.
    follow = client.chat.completions.create(
        model="gpt-4o-mini",
        tools=TOOLS,
        messages=[
            {"role": "user", "content": "weather?"},
            final.choices[0].message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": calls[0].id, "content": "sunny"},
        ],
    )
    assert follow.choices[0].message.content == "Tool result received: sunny"


def test_single_tool_call_non_streaming_with_tool_choice(client):
    r = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=HELLO,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )
    calls = r.choices[0].message.tool_calls
    assert len(calls) == 1 and calls[0].function.name == "get_time"


def test_json_mode(client):
    r = client.chat.completions.create(
        model="gpt-4o-mini", messages=HELLO, response_format={"type": "json_object"}
    )
    assert json.loads(r.choices[0].message.content) == {"answer": "hi there"}


class Weather(BaseModel):
    city: str
    celsius: int


def test_structured_output_parse(client):
    r = client.chat.completions.parse(model="gpt-4o-mini", messages=HELLO, response_format=Weather)
    assert r.choices[0].message.parsed == Weather(city="mock", celsius=1)


def test_embeddings_default_base64_and_float(client):
    r = client.embeddings.create(model="text-embedding-3-small", input=["hello world", "bye"])
    assert len(r.data) == 2
    assert len(r.data[0].embedding) == 8
    assert all(isinstance(x, float) for x in r.data[0].embedding)
    f = client.embeddings.create(model="text-embedding-3-small", input=["hello world", "bye"], encoding_format="float")
    assert [round(x, 5) for x in f.data[0].embedding] == [round(x, 5) for x in r.data[0].embedding]
    assert r.usage.prompt_tokens == 3


def test_models_list(client):
    ids = sorted(m.id for m in client.models.list())
    assert ids == [
        "az-dep",
        "az-responses",
        "bedrock-claude",
        "bedrock-throttle",
        "cached",
        "claude-errors",
        "claude-failover",
        "claude-sonnet-4-5",
        "errors",
        "failover",
        "gemini-2.5-flash",
        "gpt-4o-mini",
        "gpt-5-responses",
        "guarded",
        "local",
        "team-coder-anthropic",
        "team-coder-gemini",
        "team-coder-openai",
        "text-embedding-3-small",
        "vendor-down",
        "vertex-gemini",
    ]


def test_failover_is_invisible_to_the_client(client, mock):
    mock.fault(model="primary", status=503)
    raw = client.chat.completions.with_raw_response.create(model="failover", messages=HELLO)
    assert raw.headers["x-relais-deployment"] == "backup/secondary"
    assert raw.parse().choices[0].message.content.startswith("Hello from mock!")


@pytest.mark.parametrize(
    "fault,exc,status",
    [
        ({"status": 500, "times": 2}, openai.InternalServerError, 500),
        ({"status": 503, "times": 2}, openai.InternalServerError, 503),
        ({"close_before_headers": True, "times": 2}, openai.InternalServerError, 502),
        (
            {
                "status": 400,
                "body": '{"error":{"message":"This model\'s maximum context length is 8192 tokens.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}',
            },
            openai.BadRequestError,
            400,
        ),
        # Last: its retry-after cools the route's deployments down for 2 s.
        ({"status": 429, "retry_after": "2", "times": 2}, openai.RateLimitError, 429),
    ],
)
def test_upstream_errors_become_sdk_exceptions(client, mock, fault, exc, status):
    mock.fault(**fault)
    with pytest.raises(exc) as info:
        client.chat.completions.create(model="errors", messages=HELLO)
    assert info.value.status_code == status
    if status == 400:
        assert info.value.code == "context_length_exceeded"
    if status == 429:
        assert info.value.response.headers["retry-after"] == "2"


def test_gateway_errors_become_sdk_exceptions(client, relais_url):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="no-such-model", messages=HELLO)
    assert info.value.code == "model_not_found"
    bad = OpenAI(base_url=f"{relais_url}/v1", api_key="wrong-key-123", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, temperature=7)
    assert info.value.param == "temperature"


def test_stream_cut_raises_in_the_sdk(client, mock):
    mock.fault(cut_after_chunks=3)
    text = ""
    with pytest.raises(openai.APIError):
        for chunk in client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, stream=True):
            for c in chunk.choices:
                text += c.delta.content or ""
    assert text == "Hello from "


@pytest.fixture
def azure(relais_url):
    return AzureOpenAI(
        azure_endpoint=relais_url, api_key=CLIENT_KEY, api_version=AZURE_API_VERSION, max_retries=0
    )


def test_azure_sdk_against_relais_azure_route(azure, mock):
    r = azure.chat.completions.create(model="az-dep", messages=HELLO)
    assert r.choices[0].message.content == "Hello from mock! You said: hi there"
    up = mock.requests()[0]
    assert up["path"] == "/openai/deployments/my-gpt-deployment/chat/completions"
    assert up["query"]["api-version"] == AZURE_API_VERSION
    assert up["headers"]["api-key"] == UPSTREAM_KEY
    text = "".join(
        c.delta.content or ""
        for chunk in azure.chat.completions.create(model="az-dep", messages=HELLO, stream=True)
        for c in chunk.choices
    )
    assert text == "Hello from mock! You said: hi there"
    with pytest.raises(openai.NotFoundError):
        azure.chat.completions.create(model="nope", messages=HELLO)
