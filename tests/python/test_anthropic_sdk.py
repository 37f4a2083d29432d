"""The official `anthropic` Python SDK against relais's `/v1/messages`, and the translation matrix:
each client API against each provider kind, streaming and not, plain text and a tool round trip.

.ci/run runs this file twice: with the SDK's 2.x line (it authenticates with
`Authorization: Bearer`) and with its 1.x line (`x-api-key`) first on PYTHONPATH.
"""

import json

import anthropic
import openai
import pytest

from conftest import CLIENT_KEY, UPSTREAM_KEY

WEATHER = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}

# Routes by the provider that answers them (see conftest.CONFIG).
PROVIDERS = {
    "openai_compat": "gpt-4o-mini",
    "azure": "az-dep",
    "anthropic": "claude-sonnet-4-5",
    "gemini": "gemini-2.5-flash",
    "vertex": "vertex-gemini",
    "bedrock": "bedrock-claude",
}


@pytest.fixture
def claude(relais_url):
    return anthropic.Anthropic(base_url=relais_url, api_key=CLIENT_KEY, max_retries=0)


@pytest.fixture
def gpt(relais_url):
    return openai.OpenAI(base_url=f"{relais_url}/v1", api_key=CLIENT_KEY, max_retries=0)


def test_sdk_line_and_its_auth_header(claude):
    major = int(anthropic.__version__.split(".")[0])
    headers = claude.auth_headers
    if major >= 2:
        assert headers == {"Authorization": f"Bearer {CLIENT_KEY}"}
    else:
        assert headers == {"X-Api-Key": CLIENT_KEY}
    # Whatever the line, the other header style works too.
    other = (
        anthropic.Anthropic(base_url=claude.base_url, auth_token=CLIENT_KEY, api_key=None, max_retries=0)
        if major < 2
        else anthropic.Anthropic(
            base_url=claude.base_url, api_key=None, max_retries=0, default_headers={"x-api-key": CLIENT_KEY}
        )
    )
    msg = other.messages.create(model="gpt-4o-mini", max_tokens=50, messages=[{"role": "user", "content": "hi"}])
    assert msg.content[0].text == "Hello from mock! You said: hi"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_anthropic_client_text(claude, mock, provider):
    raw = claude.messages.with_raw_response.create(
        model=PROVIDERS[provider],
        max_tokens=50,
        system="be brief",
        messages=[{"role": "user", "content": "hi there"}],
        extra_headers={"anthropic-beta": "prompt-caching-2024-07-31"},
    )
    assert raw.headers["request-id"]
    msg = raw.parse()
    assert msg.type == "message" and msg.role == "assistant"
    assert msg.model == PROVIDERS[provider]
    assert [b.type for b in msg.content] == ["text"]
    assert msg.content[0].text == "Hello from mock! You said: hi there"
    assert msg.stop_reason == "end_turn"
    assert msg.usage.input_tokens > 0 and msg.usage.output_tokens == 7
    sent = mock.requests()[-1]
    # Each vendor got its own credential header.
    auth_header = {
        "openai_compat": "authorization",
        "azure": "api-key",
        "anthropic": "x-api-key",
        "gemini": "x-goog-api-key",
        "vertex": "authorization",
        "bedrock": "authorization",
    }[provider]
    assert sent["headers"].get(auth_header)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_anthropic_client_streams_text(claude, provider):
    with claude.messages.stream(
        model=PROVIDERS[provider], max_tokens=50, messages=[{"role": "user", "content": "stream me"}]
    ) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) > 1, "text arrived in one piece: the stream was buffered"
    assert "".join(pieces) == "Hello from mock! You said: stream me"
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 7
    assert final.usage.input_tokens > 0


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_anthropic_client_tool_round_trip(claude, provider, stream):
    messages = [{"role": "user", "content": "weather in Paris?"}]
    args = dict(model=PROVIDERS[provider], max_tokens=200, tools=[WEATHER], messages=messages)
    if stream:
        with claude.messages.stream(**args) as s:
            first = s.get_final_message()
    else:
        first = claude.messages.create(**args)
    assert first.stop_reason == "tool_use"
    calls = [b for b in first.content if b.type == "tool_use"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    assert calls[0].input == {"city": "mock"}
    messages += [
        {"role": "assistant", "content": first.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": calls[0].id, "content": "sunny"}]},
    ]
    second = claude.messages.create(model=PROVIDERS[provider], max_tokens=200, tools=[WEATHER], messages=messages)
    assert second.content[0].text == "Tool result received: sunny"
    assert second.stop_reason == "end_turn"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_anthropic_client_structured_output(claude, provider):
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    msg = claude.messages.create(
        model=PROVIDERS[provider],
        max_tokens=100,
        messages=[{"role": "user", "content": "json please"}],
        extra_body={"output_config": {"format": {"type": "json_schema", "schema": schema}}},
    )
    assert json.loads(msg.content[0].text) == {"answer": "mock"}


@pytest.mark.parametrize("stream", [False, True])
def test_openai_client_against_anthropic_provider(gpt, mock, stream):
    tools = [{"type": "function", "function": {"name": WEATHER["name"], "parameters": WEATHER["input_schema"]}}]
    messages = [{"role": "user", "content": "weather?"}]
    if stream:
        with gpt.chat.completions.stream(model="claude-sonnet-4-5", messages=messages, tools=tools) as s:
            for _ in s:
                pass
            first = s.get_final_completion()
    else:
        first = gpt.chat.completions.create(model="claude-sonnet-4-5", messages=messages, tools=tools)
    assert first.choices[0].finish_reason == "tool_calls"
    call = first.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "mock"}
    sent = mock.requests()[-1]
    assert sent["path"] == "/v1/messages"
    assert sent["headers"]["x-api-key"] == UPSTREAM_KEY
    assert sent["headers"]["anthropic-version"]
    assert sent["body"]["tools"][0]["input_schema"] == WEATHER["input_schema"]
    messages += [
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "rainy"},
    ]
    second = gpt.chat.completions.create(model="claude-sonnet-4-5", messages=messages, tools=tools)
    assert second.choices[0].message.content == "Tool result received: rainy"
    # The tool result went to Anthropic as a tool_result block in a user turn.
    last = mock.requests()[-1]["body"]["messages"][-1]
    assert last["role"] == "user" and last["content"][0]["type"] == "tool_result"
    assert second.usage.prompt_tokens > 0


def test_openai_client_streams_from_anthropic_provider(gpt):
    stream = gpt.chat.completions.create(
        model="claude-sonnet-4-5",
        messages=[{"role": "user", "content": "hello"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage = "", None
    for chunk in stream:
        usage = chunk.usage or usage
        for c in chunk.choices:
            text += c.delta.content or ""
    assert text == "Hello from mock! You said: hello"
    assert usage.completion_tokens == 6


def test_overloaded_anthropic_fails_over_before_the_first_byte(claude, mock):
    mock.fault(model="claude-primary", status=529)
    msg = claude.messages.create(
        model="claude-failover", max_tokens=20, messages=[{"role": "user", "content": "still there?"}]
    )
    assert msg.content[0].text == "Hello from mock! You said: still there?"
    paths = [r["path"] for r in mock.requests()]
    assert paths == ["/v1/messages", "/v1/chat/completions"]


@pytest.mark.parametrize(
    "fault,exc,status",
    [
        ({"status": 529}, getattr(anthropic, "OverloadedError", anthropic.InternalServerError), 529),
        ({"status": 500}, anthropic.InternalServerError, 500),
        ({"status": 400, "body": json.dumps({"type": "error", "error": {"type": "invalid_request_error", "message": "bad thing"}})}, anthropic.BadRequestError, 400),
        # Last: its retry-after cools the route's deployment down for 3 s.
        ({"status": 429, "retry_after": "3"}, anthropic.RateLimitError, 429),
    ],
)
def test_upstream_errors_in_anthropic_shape(claude, mock, fault, exc, status):
    mock.fault(model="claude-errors", **fault)
    with pytest.raises(exc) as e:
        claude.messages.create(model="claude-errors", max_tokens=20, messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == status
    body = e.value.body
    assert body["type"] == "error" and body["error"]["type"] and body["error"]["message"]
    if status == 429:
        assert e.value.response.headers["retry-after"] == "3"


def test_gateway_errors_in_anthropic_shape(claude, relais_url):
    with pytest.raises(anthropic.NotFoundError) as e:
        claude.messages.create(model="no-such-route", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert e.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError) as e:
        claude.messages.create(model="gpt-4o-mini", max_tokens=5, messages=[])
    assert e.value.body["error"]["type"] == "invalid_request_error"
    assert "messages" in e.value.body["error"]["message"]
    bad = anthropic.Anthropic(base_url=relais_url, api_key="wrong-key", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as e:
        bad.messages.create(model="gpt-4o-mini", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert e.value.body["error"]["type"] == "authentication_error"
    assert "wrong-key" not in json.dumps(e.value.body)


def test_stream_cut_becomes_an_error_event(claude, mock):
    mock.fault(model="claude-sonnet-4-5-20250929", cut_after_chunks=5)
    got = ""
    with pytest.raises(anthropic.APIError):
        with claude.messages.stream(
            model="claude-sonnet-4-5", max_tokens=50, messages=[{"role": "user", "content": "one two three four"}]
        ) as s:
            for t in s.text_stream:
                got += t
    # What arrived before the cut arrived once, in order, and was not replayed.
    assert "Hello from mock! You said: one two three four".startswith(got)


def test_count_tokens(claude):
    small = claude.messages.count_tokens(model="claude-sonnet-4-5", messages=[{"role": "user", "content": "hi"}])
    big = claude.messages.count_tokens(
        model="claude-sonnet-4-5", tools=[WEATHER], messages=[{"role": "user", "content": "hi " * 400}]
    )
    assert 0 < small.input_tokens < big.input_tokens
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.count_tokens(model="no-such-route", messages=[{"role": "user", "content": "hi"}])


def test_local_model_through_messages(claude):
    msg = claude.messages.create(
        model="local", max_tokens=8, extra_body={"temperature": 0}, messages=[{"role": "user", "content": "Say hello."}]
    )
    assert msg.content[0].type == "text" and msg.content[0].text
    assert msg.stop_reason in ("end_turn", "max_tokens")
    assert msg.usage.output_tokens <= 8
    with pytest.raises(anthropic.BadRequestError) as e:
        claude.messages.create(model="local", max_tokens=8, tools=[WEATHER], messages=[{"role": "user", "content": "x"}])
    assert "tool" in e.value.body["error"]["message"]


OPENAI_WEATHER = [{"type": "function", "function": {"name": WEATHER["name"], "parameters": WEATHER["input_schema"]}}]
# A 1x1 PNG, for image input.
PIXEL = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_openai_client_matrix_text_and_tools(gpt, provider, stream):
    """The OpenAI SDK against every provider kind: text, then a tool call and its result."""
    route = PROVIDERS[provider]
    if stream:
        with gpt.chat.completions.stream(model=route, messages=[{"role": "user", "content": "hi there"}]) as s:
            for _ in s:
                pass
            text = s.get_final_completion()
    else:
        text = gpt.chat.completions.create(model=route, messages=[{"role": "user", "content": "hi there"}])
    assert text.choices[0].message.content == "Hello from mock! You said: hi there"
    assert text.choices[0].finish_reason == "stop"
    messages = [{"role": "user", "content": "weather?"}]
    first = gpt.chat.completions.create(model=route, messages=messages, tools=OPENAI_WEATHER)
    assert first.choices[0].finish_reason == "tool_calls"
    call = first.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "mock"}
    messages += [
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "windy"},
    ]
    second = gpt.chat.completions.create(model=route, messages=messages, tools=OPENAI_WEATHER)
    assert second.choices[0].message.content == "Tool result received: windy"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_openai_client_matrix_json_schema(gpt, provider):
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    r = gpt.chat.completions.create(
        model=PROVIDERS[provider],
        messages=[{"role": "user", "content": "json please"}],
        response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
    )
    assert json.loads(r.choices[0].message.content) == {"answer": "mock"}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_openai_client_matrix_image_input(gpt, provider):
    content = [{"type": "text", "text": "what is it"}, {"type": "image_url", "image_url": {"url": PIXEL}}]
    r = gpt.chat.completions.create(model=PROVIDERS[provider], messages=[{"role": "user", "content": content}])
    assert r.choices[0].message.content.startswith("Hello from mock! You said: what is it")


def test_image_input_to_the_local_model_is_a_capability_error(gpt):
    content = [{"type": "text", "text": "what is it"}, {"type": "image_url", "image_url": {"url": PIXEL}}]
    with pytest.raises(openai.BadRequestError) as e:
        gpt.chat.completions.create(model="local", messages=[{"role": "user", "content": content}])
    # The router refuses before any deployment is tried: none of the route's serves images.
    assert "supports images" in e.value.body["message"]


def test_stream_broken_right_after_message_start_fails_over(claude, mock):
    """Anthropic's upstream accepted (message_start) and then broke before any content: the
    client saw nothing yet, so the backup answers instead of an error."""
    mock.fault(model="claude-primary", cut_after_chunks=1)
    with claude.messages.stream(
        model="claude-failover", max_tokens=20, messages=[{"role": "user", "content": "again"}]
    ) as s:
        text = "".join(s.text_stream)
    assert text == "Hello from mock! You said: again"
    assert [r["path"] for r in mock.requests()] == ["/v1/messages", "/v1/chat/completions"]
