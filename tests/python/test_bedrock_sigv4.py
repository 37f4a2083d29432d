"""The Bedrock provider against AWS's own signer: botocore re-signs each request relais sent to
the mock's Bedrock Runtime, from what the mock recorded (method, path as sent, headers, body
bytes) at the request's own `x-amz-date`, and must arrive at the same `Authorization` header.

The mock verifies signatures itself (a bad one is a 403 that relais would report), so a passing
call shows relais and the mock agree; this file shows that both agree with botocore, which is
what Bedrock checks. Also: the model id's encoding in the path, the session token, streaming
(binary event stream), a tool round trip and a throttle.
"""

import datetime
import json
from unittest import mock as patch
from urllib.parse import quote, urlencode

import openai
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from conftest import (
    BEDROCK_ACCESS_KEY_ID,
    BEDROCK_MODEL_ID,
    BEDROCK_REGION,
    BEDROCK_SESSION_TOKEN,
    CLIENT_KEY,
    UPSTREAM_KEY,
)

ROUTE = "bedrock-claude"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


@pytest.fixture
def gpt(relais_url):
    return openai.OpenAI(base_url=f"{relais_url}/v1", api_key=CLIENT_KEY, max_retries=0)


def bedrock_requests(mock) -> list:
    return [r for r in mock.requests() if r["path"].startswith("/model/")]


def lower(headers: dict) -> dict:
    return {k.lower(): v for k, v in headers.items()}


def botocore_authorization(mock_url: str, rec: dict, secret: str = UPSTREAM_KEY) -> str:
    """The Authorization header botocore computes for a recorded request, at its x-amz-date.

    Only what a client chooses to sign is given to botocore (the content type); it adds `host`
    from the URL, `x-amz-date` from the (patched) clock and `x-amz-security-token` from the
    credentials itself, so the signed-header list is botocore's choice, not relais's.
    """
    headers = lower(rec["headers"])
    when = datetime.datetime.strptime(headers["x-amz-date"], "%Y%m%dT%H%M%SZ")
    url = mock_url + rec["path"]
    if rec["query"]:
        url += "?" + urlencode(rec["query"])
    request = AWSRequest(
        method=rec["method"],
        url=url,
        headers={"Content-Type": headers["content-type"]},
        data=rec["body_raw"].encode(),
    )
    credentials = Credentials(BEDROCK_ACCESS_KEY_ID, secret, BEDROCK_SESSION_TOKEN)
    with patch.patch("botocore.auth.get_current_datetime", return_value=when):
        SigV4Auth(credentials, "bedrock", BEDROCK_REGION).add_auth(request)
    assert request.headers["X-Amz-Date"] == headers["x-amz-date"]
    return request.headers["Authorization"]


def assert_signed_like_botocore(mock, rec: dict) -> None:
    headers = lower(rec["headers"])
    # The Host botocore derives from the URL is the one relais signed and hyper sent.
    assert headers["host"] == mock.url.removeprefix("http://")
    assert headers["x-amz-security-token"] == BEDROCK_SESSION_TOKEN
    # Only S3 wants the payload hash as a header; Bedrock gets it inside the signature.
    assert "x-amz-content-sha256" not in headers
    assert headers["authorization"] == botocore_authorization(mock.url, rec)
    # The oracle is not vacuous: another secret gives another signature.
    assert headers["authorization"] != botocore_authorization(mock.url, rec, secret="not-the-key")


def test_whole_answer_is_signed_as_botocore_signs_it(gpt, mock):
    r = gpt.chat.completions.create(model=ROUTE, messages=[{"role": "user", "content": "hi"}])
    assert r.choices[0].message.content == "Hello from mock! You said: hi"
    assert r.choices[0].finish_reason == "stop"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (2, 6)
    [rec] = bedrock_requests(mock)
    assert rec["method"] == "POST"
    # The model id is one path segment, encoded as botocore encodes a URI label (`:` -> %3A).
    assert rec["path"] == f"/model/{quote(BEDROCK_MODEL_ID, safe='-_.~')}/converse"
    assert rec["body"] == {"messages": [{"role": "user", "content": [{"text": "hi"}]}]}
    assert json.loads(rec["body_raw"]) == rec["body"]
    assert_signed_like_botocore(mock, rec)


def test_stream_is_signed_as_botocore_signs_it(gpt, mock):
    stream = gpt.chat.completions.create(
        model=ROUTE,
        messages=[{"role": "user", "content": "stream please"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage, finish = "", None, None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            usage = chunk.usage
    assert text == "Hello from mock! You said: stream please"
    assert finish == "stop"
    assert (usage.prompt_tokens, usage.completion_tokens) == (3, 7)
    [rec] = bedrock_requests(mock)
    assert rec["path"] == f"/model/{quote(BEDROCK_MODEL_ID, safe='-_.~')}/converse-stream"
    assert_signed_like_botocore(mock, rec)


def test_tool_round_trip(gpt, mock):
    question = {"role": "user", "content": "Weather in Paris?"}
    r = gpt.chat.completions.create(model=ROUTE, messages=[question], tools=[WEATHER])
    assert r.choices[0].finish_reason == "tool_calls"
    [call] = r.choices[0].message.tool_calls
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "mock"}
    sent = bedrock_requests(mock)[-1]["body"]
    assert sent["toolConfig"]["tools"] == [
        {
            "toolSpec": {
                "name": "get_weather",
                "description": "Weather for a city",
                "inputSchema": {"json": WEATHER["function"]["parameters"]},
            }
        }
    ]

    r = gpt.chat.completions.create(
        model=ROUTE,
        messages=[
            question,
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": call.id,
                        "type": "function",
                        "function": {"name": call.function.name, "arguments": call.function.arguments},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
        ],
        tools=[WEATHER],
    )
    assert r.choices[0].message.content == "Tool result received: sunny"
    rec = bedrock_requests(mock)[-1]
    assert rec["body"]["messages"][1:] == [
        {
            "role": "assistant",
            "content": [{"toolUse": {"toolUseId": call.id, "name": "get_weather", "input": {"city": "mock"}}}],
        },
        {"role": "user", "content": [{"toolResult": {"toolUseId": call.id, "content": [{"text": "sunny"}]}}]},
    ]
    assert_signed_like_botocore(mock, rec)


def test_throttling_is_a_rate_limit(gpt, mock):
    mock.fault(status=429, model=BEDROCK_MODEL_ID, retry_after="1")
    with pytest.raises(openai.RateLimitError) as caught:
        gpt.chat.completions.create(model="bedrock-throttle", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.response.headers.get("retry-after") == "1"
