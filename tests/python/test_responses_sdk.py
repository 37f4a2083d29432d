"""The OpenAI Responses API through relais, with the official openai SDK and the OpenAI Agents
SDK's default (Responses) model: conversation state across vendors, stored responses scoped to
their key, what cannot be carried refused by name, failures inside a stream.

The translation matrix (test_matrix.py) covers {text, tools, images, JSON} x every provider.
"""

import json

import openai
import pytest
from openai import OpenAI

from conftest import CLIENT_KEY, OTHER_KEY


@pytest.fixture
def client(relais_url):
    return OpenAI(base_url=f"{relais_url}/v1", api_key=CLIENT_KEY, max_retries=0, timeout=60)


@pytest.fixture
def other(relais_url):
    return OpenAI(base_url=f"{relais_url}/v1", api_key=OTHER_KEY, max_retries=0, timeout=60)


def test_a_conversation_moves_between_vendors_with_previous_response_id(client, mock):
    first = client.responses.create(model="gpt-4o-mini", input="hi there", instructions="Be brief.")
    assert first.output_text == "Hello from mock! You said: hi there"
    assert first.id.startswith("resp_") and first.status == "completed"
    assert first.instructions == "Be brief."
    assert first.usage.input_tokens > 0 and first.usage.total_tokens > first.usage.input_tokens
    # The second turn goes to Anthropic, the third (streamed) to Gemini: each upstream gets the
    # whole conversation, the client sends only the new input.
    second = client.responses.create(
        model="claude-sonnet-4-5", input="and now?", previous_response_id=first.id
    )
    assert second.output_text == "Hello from mock! You said: and now?"
    assert second.previous_response_id == first.id
    sent = mock.requests()[-1]["body"]
    # Instructions are not carried from one turn to the next (as OpenAI documents).
    assert "system" not in sent
    texts = [json.dumps(m["content"]) for m in sent["messages"]]
    assert "hi there" in texts[0] and "Hello from mock" in texts[1] and "and now?" in texts[2]
    with client.responses.stream(
        model="gemini-2.5-flash", input="third", previous_response_id=second.id
    ) as s:
        third = s.get_final_response()
    assert third.output_text == "Hello from mock! You said: third"
    contents = mock.requests()[-1]["body"]["contents"]
    assert [c["role"] for c in contents] == ["user", "model", "user", "model", "user"]
    # The stored conversation lists every input so far, newest first by default.
    items = client.responses.input_items.list(third.id)
    texts = [json.dumps(i.model_dump()) for i in items.data]
    assert "third" in texts[0] and "hi there" in texts[-1]
    assert len(items.data) == 5 and not items.has_more
    oldest = client.responses.input_items.list(third.id, order="asc", limit=2)
    assert oldest.has_more and "hi there" in json.dumps(oldest.data[0].model_dump())


def test_stored_responses_belong_to_their_key(client, other):
    r = client.responses.create(model="gpt-4o-mini", input="keep this", metadata={"case": "scope"})
    got = client.responses.retrieve(r.id)
    assert got.id == r.id and got.output_text == r.output_text and got.metadata == {"case": "scope"}
    # Another key sees nothing: not the response, not its items, and cannot continue it.
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.input_items.list(r.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.delete(r.id)
    with pytest.raises(openai.BadRequestError) as e:
        other.responses.create(model="gpt-4o-mini", input="x", previous_response_id=r.id)
    assert e.value.param == "previous_response_id"
    # Its maker deletes it; then it is gone for everyone.
    client.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)


def test_store_false_keeps_nothing(client):
    r = client.responses.create(model="gpt-4o-mini", input="forget me", store=False)
    assert r.store is False and r.output_text.endswith("forget me")
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="gpt-4o-mini", input="x", previous_response_id=r.id)
    assert "not found" in e.value.message


@pytest.mark.parametrize(
    "extra,param,words",
    [
        ({"tools": [{"type": "web_search"}]}, "tools", "web_search"),
        ({"tools": [{"type": "code_interpreter", "container": {"type": "auto"}}]}, "tools", "code_interpreter"),
        ({"background": True, "store": False}, "background", "background"),
        ({"truncation": "auto"}, "truncation", "truncation"),
        ({"include": ["message.output_text.logprobs"]}, "include[0]", "logprobs"),
        ({"extra_body": {"conversation": "conv_1"}}, "conversation", "previous_response_id"),
    ],
)
def test_what_cannot_be_carried_is_a_400_naming_it(client, extra, param, words):
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="gpt-4o-mini", input="x", **extra)
    assert e.value.status_code == 400
    assert e.value.param == param
    assert words in e.value.message


def test_errors_have_the_openai_shape(client, relais_url):
    with pytest.raises(openai.NotFoundError) as e:
        client.responses.create(model="no-such-route", input="x")
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.AuthenticationError):
        OpenAI(base_url=f"{relais_url}/v1", api_key="wrong", max_retries=0).responses.create(
            model="gpt-4o-mini", input="x"
        )
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="gpt-4o-mini", input="x", temperature=9)
    assert e.value.param == "temperature"


def test_a_stream_that_breaks_ends_in_response_failed(client, mock):
    mock.fault(cut_after_chunks=3)
    kinds = []
    with pytest.raises(openai.APIError):
        with client.responses.stream(model="gpt-4o-mini", input="hi there") as s:
            for event in s:
                kinds.append(event.type)
    assert "response.output_text.delta" in kinds
    assert "response.completed" not in kinds


def test_a_stream_that_breaks_has_error_and_response_failed_events(relais_url, mock):
    """The same, read as raw events: `error`, then `response.failed` with the error in it."""
    import urllib.request

    mock.fault(cut_after_chunks=3)
    req = urllib.request.Request(
        f"{relais_url}/v1/responses",
        data=json.dumps({"model": "gpt-4o-mini", "input": "hi there", "stream": True}).encode(),
        headers={"authorization": f"Bearer {CLIENT_KEY}", "content-type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        frames = resp.read().decode().strip().split("\n\n")
    events = [json.loads(f.split("data: ", 1)[1]) for f in frames]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[-2]["type"] == "error"
    assert events[-1]["type"] == "response.failed"
    assert events[-1]["response"]["status"] == "failed" and events[-1]["response"]["error"]["message"]


def test_input_tokens_estimate_counts_the_stored_conversation(client):
    first = client.responses.create(model="gpt-4o-mini", input="count " * 200)
    alone = client.responses.input_tokens.count(model="gpt-4o-mini", input="hello")
    chained = client.responses.input_tokens.count(
        model="gpt-4o-mini", input="hello", previous_response_id=first.id
    )
    assert 0 < alone.input_tokens < chained.input_tokens


def test_tool_round_trip_with_previous_response_id(client):
    """The agent loop most Responses clients run: the tool call's output is the only input of
    the next turn, the call itself comes from the stored response."""
    tools = [{"type": "function", "name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
    for route in ("gpt-4o-mini", "claude-sonnet-4-5", "gemini-2.5-flash", "bedrock-claude"):
        r = client.responses.create(model=route, input="weather in Paris?", tools=tools)
        call = next(o for o in r.output if o.type == "function_call")
        assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "mock"}
        r2 = client.responses.create(
            model=route,
            tools=tools,
            previous_response_id=r.id,
            input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
        )
        assert r2.output_text == "Tool result received: sunny", route


def test_the_agents_sdk_default_model_runs_a_tool_through_relais(relais_url, tmp_path):
    """The OpenAI Agents SDK with its default model (the Responses API): one tool round trip that
    writes a file, through a same-vendor route and a cross-vendor one."""
    from agents import Agent, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled
    from openai import AsyncOpenAI

    set_tracing_disabled(True)

    for route in ("gpt-4o-mini", "claude-sonnet-4-5"):
        target = tmp_path / f"{route}.txt"

        @function_tool
        def write_file(content: str) -> str:
            """Write the file."""
            target.write_text(content)
            return "written"

        client = AsyncOpenAI(base_url=f"{relais_url}/v1", api_key=CLIENT_KEY, max_retries=0)
        agent = Agent(
            name="writer",
            instructions="Write the file, then say so.",
            tools=[write_file],
            model=OpenAIResponsesModel(model=route, openai_client=client),
        )
        result = Runner.run_sync(agent, "write the file")
        assert target.read_text() == "mock", route
        assert result.final_output == "Tool result received: written", route


def test_reasoning_survives_turns_on_a_responses_upstream(client, mock):
    """Responses client -> Responses upstream: the reasoning item (its encrypted content) the
    upstream sent comes back to it on the next turn, relais keeping the conversation."""
    for stream in (False, True):
        mock.clear()
        kw = dict(model="gpt-5-responses", input="think first", reasoning={"effort": "high", "summary": "auto"},
                  include=["reasoning.encrypted_content"])
        if stream:
            with client.responses.stream(**kw) as s:
                first = s.get_final_response()
        else:
            first = client.responses.create(**kw)
        kinds = [o.type for o in first.output]
        assert kinds == ["reasoning", "message"], kinds
        assert first.output[0].encrypted_content and first.output[0].summary[0].text == "Mock reasoning."
        assert first.usage.output_tokens_details.reasoning_tokens == 5
        client.responses.create(model="gpt-5-responses", input="and then?", previous_response_id=first.id,
                                reasoning={"effort": "high"})
        sent = mock.requests()[-1]
        assert sent["path"] == "/v1/responses" and sent["body"]["store"] is False
        items = sent["body"]["input"]
        reasoning = [i for i in items if i.get("type") == "reasoning"]
        assert reasoning and reasoning[0]["encrypted_content"] == "gAAAAmock-encrypted-reasoning"
        assert reasoning[0]["id"] == "rs_mock_0"


def recv_until_done(conn):
    """The events of one response on a socket, up to its last."""
    events = []
    while True:
        ev = conn.recv()
        events.append(ev)
        if ev.type in ("response.completed", "response.incomplete", "response.failed", "error"):
            return events


def test_the_websocket_mode_runs_turns_on_one_socket(client, mock):
    """OpenAI's WebSocket mode (`client.responses.connect()`): response.create messages in, the
    same events out, one response after another; turns chain with previous_response_id even
    unstored (the socket keeps them); a refusal is an error event and the socket goes on."""
    with client.responses.connect() as conn:
        conn.send({"type": "response.create", "model": "gpt-4o-mini", "input": "hi there", "store": False})
        events = recv_until_done(conn)
        assert [e.sequence_number for e in events] == list(range(len(events)))
        first = events[-1].response
        assert events[-1].type == "response.completed"
        assert first.output_text == "Hello from mock! You said: hi there"
        conn.send({"type": "response.create", "model": "claude-sonnet-4-5", "input": "again",
                   "previous_response_id": first.id, "store": False})
        second = recv_until_done(conn)[-1]
        assert second.type == "response.completed", second
        messages = mock.requests()[-1]["body"]["messages"]
        assert len(messages) == 3 and "hi there" in json.dumps(messages[0])
        conn.send({"type": "response.create", "model": "no-such-route", "input": "x"})
        refused = recv_until_done(conn)[-1]
        assert refused.type == "error" and refused.status == 404, refused
        conn.send({"type": "response.create", "model": "gpt-4o-mini", "input": "still here"})
        last = recv_until_done(conn)[-1]
        assert last.response.output_text == "Hello from mock! You said: still here"
    # What the socket kept unstored is gone with it; the stored one stays.
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    assert client.responses.retrieve(last.response.id).output_text.endswith("still here")


def test_the_websocket_needs_a_key(relais_url):
    bad = OpenAI(base_url=f"{relais_url}/v1", api_key="wrong-key", max_retries=0)
    with pytest.raises(Exception) as e:
        with bad.responses.connect(max_retries=0) as conn:
            conn.send({"type": "response.create", "model": "gpt-4o-mini", "input": "x"})
            conn.recv()
    assert "401" in str(e.value) or "rejected" in str(e.value).lower(), e.value


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_hosted_tools_pass_through_to_a_responses_upstream(client, mock, stream):
    """A Responses client on a route whose upstream speaks the Responses API: the request goes
    through whole (the hosted web_search tool included) and so does the answer (the
    web_search_call item, the citation on the text), which relais still stores and continues."""
    kw = dict(model="gpt-5-responses", input="what is new?", tools=[{"type": "web_search"}])
    if stream:
        with client.responses.stream(**kw) as s:
            kinds = [e.type for e in s]
            r = s.get_final_response()
        assert "response.web_search_call.completed" in kinds
        assert "response.output_text.annotation.added" in kinds
    else:
        r = client.responses.create(**kw)
    assert [o.type for o in r.output] == ["web_search_call", "message"]
    assert r.output[1].content[0].annotations[0].url == "https://example.com/mock-source"
    assert r.output_text == "Hello from mock! You said: what is new?"
    sent = mock.requests()[-1]["body"]
    assert sent["tools"] == [{"type": "web_search"}] and sent["store"] is False
    assert "previous_response_id" not in sent
    # The next turn, through relais's stored conversation, carries the hosted call back.
    r2 = client.responses.create(model="gpt-5-responses", input="more?", previous_response_id=r.id,
                                 tools=[{"type": "web_search"}])
    assert r2.output_text.endswith("more?")
    kinds = [i.get("type") for i in mock.requests()[-1]["body"]["input"]]
    assert kinds == ["message", "web_search_call", "message", "message"], kinds
    # The same request on a route that may reach another API is refused by name.
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="gpt-4o-mini", input="x", tools=[{"type": "web_search"}])
    assert "web_search" in e.value.message


def test_background_mode_runs_in_relais_for_any_vendor(client, mock):
    """background: true on a route to Anthropic: answered `queued` at once, run by relais, the
    answer found with GET; a failure becomes a `failed` response with its error."""
    import time

    def settle(rid):
        for _ in range(200):
            got = client.responses.retrieve(rid)
            if got.status not in ("queued", "in_progress"):
                return got
            time.sleep(0.02)
        raise AssertionError(f"{rid} still {got.status}")

    r = client.responses.create(model="claude-sonnet-4-5", input="hi there", background=True)
    assert r.status == "queued" and r.background is True and not r.output
    done = settle(r.id)
    assert done.status == "completed" and done.output_text == "Hello from mock! You said: hi there"
    assert done.id == r.id
    # It continues like any stored response.
    nxt = client.responses.create(model="gpt-4o-mini", input="and?", previous_response_id=r.id)
    assert nxt.output_text.endswith("and?")
    mock.fault(status=400, times=2)
    bad = client.responses.create(model="errors", input="x", background=True)
    failed = settle(bad.id)
    assert failed.status == "failed" and failed.error.message
