"""The translation matrix of the providers issue, in one place:

    clients   {openai SDK on /v1/chat/completions, openai SDK on /v1/responses,
               anthropic SDK on /v1/messages, google-genai on /v1beta/models/...}
  x providers {openai_compat, openai_compat and azure with wire_api = "responses", azure,
               anthropic, gemini, vertex, bedrock, local}
  x           {streaming, non-streaming}
  x cases     {plain text, tool call round trip, image input, JSON output}

Every cell must end in a well-formed answer the SDK parses, or in a clear capability error (a
400 naming the feature) where the provider cannot do it: the built-in model takes text only, and
the router refuses such a request before trying it.
.ci/run runs this file with the anthropic SDK's 2.x line and again with its 1.x line.
"""

import json

import base64

import anthropic
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types

from conftest import CLIENT_KEY

ROUTES = {
    "openai_compat": "gpt-4o-mini",
    "openai_responses": "gpt-5-responses",
    "azure": "az-dep",
    "azure_responses": "az-responses",
    "anthropic": "claude-sonnet-4-5",
    "gemini": "gemini-2.5-flash",
    "vertex": "vertex-gemini",
    "bedrock": "bedrock-claude",
    "local": "local",
}
SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
PARAMS = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
# The built-in model answers with real inference: keep its answers short.
MAX = 48


class OpenAiClient:
    """One turn through the openai SDK, returned as (text, tool calls, finish)."""

    def __init__(self, url):
        self.c = openai.OpenAI(base_url=f"{url}/v1", api_key=CLIENT_KEY, max_retries=0, timeout=120)

    def turn(self, route, messages, stream, tools=False, json_out=False):
        kw = dict(model=route, messages=messages, max_tokens=MAX, temperature=0)
        if tools:
            kw["tools"] = [{"type": "function", "function": {"name": "get_weather", "parameters": PARAMS}}]
        if json_out:
            kw["response_format"] = {"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA}}
        if stream:
            try:
                with self.c.chat.completions.stream(**kw) as s:
                    for _ in s:
                        pass
                    r = s.get_final_completion()
            except openai.LengthFinishReasonError as e:
                # The stream helper refuses to parse structured output cut by max_tokens; the
                # completion itself arrived whole and is checked like any other.
                r = e.completion
        else:
            r = self.c.chat.completions.create(**kw)
        m = r.choices[0].message
        calls = [(t.id, t.function.name, json.loads(t.function.arguments)) for t in m.tool_calls or []]
        return m.content or "", calls, r.choices[0].finish_reason, m

    def user(self, text, image=False):
        if not image:
            return {"role": "user", "content": text}
        return {
            "role": "user",
            "content": [
                {"type": "text", "text": text},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
            ],
        }

    def answer_with_tool_result(self, assistant, call_id, result):
        return [assistant.model_dump(exclude_none=True), {"role": "tool", "tool_call_id": call_id, "content": result}]

    capability_error = openai.BadRequestError
    tool_use = "tool_calls"
    length = "length"


class AnthropicClient:
    def __init__(self, url):
        self.c = anthropic.Anthropic(base_url=url, api_key=CLIENT_KEY, max_retries=0, timeout=120)

    def turn(self, route, messages, stream, tools=False, json_out=False):
        kw = dict(model=route, messages=messages, max_tokens=MAX, extra_body={"temperature": 0})
        if tools:
            kw["tools"] = [{"name": "get_weather", "input_schema": PARAMS}]
        if json_out:
            kw["extra_body"]["output_config"] = {"format": {"type": "json_schema", "schema": SCHEMA}}
        if stream:
            with self.c.messages.stream(**kw) as s:
                m = s.get_final_message()
        else:
            m = self.c.messages.create(**kw)
        text = "".join(b.text for b in m.content if b.type == "text")
        calls = [(b.id, b.name, b.input) for b in m.content if b.type == "tool_use"]
        return text, calls, m.stop_reason, m

    def user(self, text, image=False):
        if not image:
            return {"role": "user", "content": text}
        return {
            "role": "user",
            "content": [
                {"type": "text", "text": text},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
            ],
        }

    def answer_with_tool_result(self, assistant, call_id, result):
        return [
            {"role": "assistant", "content": assistant.content},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call_id, "content": result}]},
        ]

    capability_error = anthropic.BadRequestError
    tool_use = "tool_use"
    length = "max_tokens"


class ResponsesClient:
    """The openai SDK's Responses API: `responses.create` and `responses.stream`."""

    def __init__(self, url):
        self.c = openai.OpenAI(base_url=f"{url}/v1", api_key=CLIENT_KEY, max_retries=0, timeout=120)

    def turn(self, route, messages, stream, tools=False, json_out=False):
        kw = dict(model=route, input=messages, max_output_tokens=MAX, temperature=0)
        if tools:
            kw["tools"] = [{"type": "function", "name": "get_weather", "parameters": PARAMS}]
        if json_out:
            kw["text"] = {"format": {"type": "json_schema", "name": "a", "schema": SCHEMA}}
        if stream:
            with self.c.responses.stream(**kw) as s:
                events = list(s)
            kinds = [e.type for e in events]
            assert kinds[:2] == ["response.created", "response.in_progress"], kinds
            assert [e.sequence_number for e in events] == list(range(len(events)))
            # The stream helper keeps only a `response.completed`; one cut by the token cap
            # ends with `response.incomplete` (as OpenAI's own does), which carries it too.
            assert kinds[-1] in ("response.completed", "response.incomplete"), kinds
            r = events[-1].response
        else:
            r = self.c.responses.create(**kw)
        calls = [(o.call_id, o.name, json.loads(o.arguments)) for o in r.output if o.type == "function_call"]
        if calls:
            finish = "tool_calls"
        elif r.status == "incomplete":
            finish = "length"
        else:
            assert r.status == "completed", r.status
            finish = "stop"
        return r.output_text, calls, finish, r

    def user(self, text, image=False):
        if not image:
            return {"role": "user", "content": text}
        return {
            "role": "user",
            "content": [
                {"type": "input_text", "text": text},
                {"type": "input_image", "image_url": f"data:image/png;base64,{PNG}"},
            ],
        }

    def answer_with_tool_result(self, assistant, call_id, result):
        return [o.model_dump(exclude_none=True) for o in assistant.output] + [
            {"type": "function_call_output", "call_id": call_id, "output": result}
        ]

    capability_error = openai.BadRequestError
    tool_use = "tool_calls"
    length = "length"


class GeminiBadRequest(Exception):
    """google-genai's 400, with the error body where the other SDKs keep it."""

    def __init__(self, err):
        super().__init__(err.message)
        self.body = err.details


class GeminiClient:
    """Google's GenAI SDK against relais's Gemini API: `generate_content` and its stream."""

    def __init__(self, url):
        self.c = genai.Client(
            api_key=CLIENT_KEY,
            http_options=genai_types.HttpOptions(base_url=url, timeout=120_000),
        )

    def turn(self, route, messages, stream, tools=False, json_out=False):
        config = dict(max_output_tokens=MAX, temperature=0)
        if tools:
            config["tools"] = [
                genai_types.Tool(
                    function_declarations=[
                        genai_types.FunctionDeclaration(name="get_weather", parameters_json_schema=PARAMS)
                    ]
                )
            ]
            config["automatic_function_calling"] = genai_types.AutomaticFunctionCallingConfig(disable=True)
        if json_out:
            config["response_mime_type"] = "application/json"
            config["response_json_schema"] = SCHEMA
        kw = dict(model=route, contents=messages, config=genai_types.GenerateContentConfig(**config))
        try:
            if stream:
                chunks = list(self.c.models.generate_content_stream(**kw))
            else:
                chunks = [self.c.models.generate_content(**kw)]
        except genai_errors.ClientError as e:
            if e.code == 400:
                raise GeminiBadRequest(e) from e
            raise
        parts = [p for c in chunks for p in (c.candidates[0].content.parts or [])]
        text = "".join(p.text for p in parts if p.text and not p.thought)
        calls = [(p.function_call.id, p.function_call.name, dict(p.function_call.args or {})) for p in parts if p.function_call]
        reason = chunks[-1].candidates[0].finish_reason
        if calls:
            finish = "tool_calls"
        elif reason == genai_types.FinishReason.MAX_TOKENS:
            finish = "length"
        else:
            assert reason == genai_types.FinishReason.STOP, reason
            finish = "stop"
        return text, calls, finish, genai_types.Content(role="model", parts=parts)

    def user(self, text, image=False):
        parts = [genai_types.Part(text=text)]
        if image:
            parts.append(genai_types.Part(inline_data=genai_types.Blob(mime_type="image/png", data=base64.b64decode(PNG))))
        return genai_types.Content(role="user", parts=parts)

    def answer_with_tool_result(self, assistant, call_id, result):
        response = genai_types.FunctionResponse(id=call_id, name="get_weather", response={"output": result})
        return [assistant, genai_types.Content(role="user", parts=[genai_types.Part(function_response=response)])]

    capability_error = GeminiBadRequest
    tool_use = "tool_calls"
    length = "length"


CLIENTS = {
    "openai": OpenAiClient,
    "responses": ResponsesClient,
    "anthropic": AnthropicClient,
    "gemini": GeminiClient,
}


@pytest.fixture(params=list(CLIENTS))
def client(request, relais_url):
    return CLIENTS[request.param](relais_url)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("provider", list(ROUTES))
def test_plain_text(client, provider, stream):
    text, calls, finish, _ = client.turn(ROUTES[provider], [client.user("hi there")], stream)
    assert not calls
    if provider == "local":
        assert text.strip() and finish in ("stop", "end_turn", client.length)
    else:
        assert text == "Hello from mock! You said: hi there"
        assert finish in ("stop", "end_turn")


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("provider", list(ROUTES))
def test_tool_round_trip(client, provider, stream):
    messages = [client.user("weather in Paris?")]
    if provider == "local":
        with pytest.raises(client.capability_error) as e:
            client.turn(ROUTES[provider], messages, stream, tools=True)
        assert "tool" in json.dumps(e.value.body)
        return
    text, calls, finish, assistant = client.turn(ROUTES[provider], messages, stream, tools=True)
    assert finish == client.tool_use
    assert [(name, args) for _, name, args in calls] == [("get_weather", {"city": "mock"})]
    messages += client.answer_with_tool_result(assistant, calls[0][0], "sunny")
    text, calls, finish, _ = client.turn(ROUTES[provider], messages, stream, tools=True)
    assert text == "Tool result received: sunny"
    assert not calls


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("provider", list(ROUTES))
def test_image_input(client, provider, stream):
    messages = [client.user("what is in this picture", image=True)]
    if provider == "local":
        with pytest.raises(client.capability_error) as e:
            client.turn(ROUTES[provider], messages, stream)
        # Refused by the router before any deployment: none of the route's serves images.
        assert "supports images" in json.dumps(e.value.body)
        return
    text, _, _, _ = client.turn(ROUTES[provider], messages, stream)
    assert text.startswith("Hello from mock! You said: what is in this picture")


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("provider", list(ROUTES))
def test_json_output(client, provider, stream):
    text, _, finish, _ = client.turn(ROUTES[provider], [client.user("answer in JSON")], stream, json_out=True)
    if provider == "local" and finish == client.length:
        # Grammar-constrained to the schema but cut by max_tokens: well-formed as far as it went.
        assert text.lstrip().startswith("{")
        return
    value = json.loads(text)
    assert set(value) == {"answer"} and isinstance(value["answer"], str)
    if provider != "local":
        assert value == {"answer": "mock"}


@pytest.mark.parametrize("provider", [p for p in ROUTES if p != "local"])
def test_coding_agent_turn(relais_url, provider):
    """What a coding agent sends on /v1/messages: a long system prompt with cache breakpoints,
    extended thinking, several tools, a long history, streaming. Every provider must answer it
    (thinking is a hint where the vendor has no budget: it must not break the turn)."""
    c = anthropic.Anthropic(base_url=relais_url, api_key=CLIENT_KEY, max_retries=0, timeout=120)
    tools = [
        {"name": n, "description": f"{n} tool", "input_schema": PARAMS}
        for n in ("read_file", "write_file", "run_tests", "search")
    ]
    system = [
        {"type": "text", "text": "You are a careful coding agent. " * 2000},
        {"type": "text", "text": "Project rules: keep tests green.", "cache_control": {"type": "ephemeral"}},
    ]
    history = []
    for i in range(20):
        history.append({"role": "user", "content": f"step {i}: " + "context line\n" * 200})
        history.append({"role": "assistant", "content": f"done with step {i}"})
    history.append({"role": "user", "content": "now read the config"})
    with c.messages.stream(
        model=ROUTES[provider],
        max_tokens=4096,
        system=system,
        tools=tools,
        messages=history,
        extra_body={"thinking": {"type": "enabled", "budget_tokens": 2048}},
    ) as s:
        m = s.get_final_message()
    calls = [b for b in m.content if b.type == "tool_use"]
    assert m.stop_reason == "tool_use" and calls[0].name == "read_file"
    assert m.usage.input_tokens > 1000
