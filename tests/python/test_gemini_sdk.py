"""The Gemini API through relais with Google's own GenAI SDK: token counts, the model list,
errors in Google's shape, every way of presenting the key, and the Gemini-only fields that only
a Gemini upstream may receive. The matrix (test_matrix.py) covers {text, tools, images, JSON} x
every provider."""

import json
import urllib.error
import urllib.request

import pytest
from google import genai
from google.genai import errors, types

from conftest import CLIENT_KEY


@pytest.fixture
def client(relais_url):
    return genai.Client(api_key=CLIENT_KEY, http_options=types.HttpOptions(base_url=relais_url))


def test_count_tokens_and_the_model_list(client):
    short = client.models.count_tokens(model="claude-sonnet-4-5", contents="hello")
    long = client.models.count_tokens(model="claude-sonnet-4-5", contents="hello " * 400)
    assert 0 < short.total_tokens < long.total_tokens
    names = [m.name for m in client.models.list()]
    assert "models/claude-sonnet-4-5" in names and "models/gemini-2.5-flash" in names
    # Embedding routes are not generateContent models.
    assert "models/text-embedding-3-small" not in names
    assert client.models.get(model="gpt-4o-mini").name == "models/gpt-4o-mini"


def test_errors_have_google_shape(client, relais_url):
    with pytest.raises(errors.ClientError) as e:
        client.models.generate_content(model="no-such-route", contents="x")
    assert e.value.code == 404 and e.value.status == "NOT_FOUND"
    bad = genai.Client(api_key="wrong-key", http_options=types.HttpOptions(base_url=relais_url))
    with pytest.raises(errors.ClientError) as e:
        bad.models.generate_content(model="gpt-4o-mini", contents="x")
    assert e.value.code == 401 and e.value.status == "UNAUTHENTICATED"
    with pytest.raises(errors.ClientError) as e:
        client.models.generate_content(
            model="gpt-4o-mini", contents="x", config=types.GenerateContentConfig(candidate_count=2)
        )
    assert e.value.code == 400 and "candidateCount" in e.value.message


def post(url, body, headers):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json", **headers})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_the_key_as_header_query_or_bearer_and_the_array_stream(relais_url):
    body = {"contents": [{"role": "user", "parts": [{"text": "hi there"}]}]}
    base = f"{relais_url}/v1beta/models/gpt-4o-mini"
    for url, headers in [
        (f"{base}:generateContent", {"x-goog-api-key": CLIENT_KEY}),
        (f"{base}:generateContent?key={CLIENT_KEY}", {}),
        (f"{base}:generateContent", {"authorization": f"Bearer {CLIENT_KEY}"}),
    ]:
        status, text = post(url, body, headers)
        assert status == 200, text
        assert json.loads(text)["candidates"][0]["content"]["parts"][0]["text"] == "Hello from mock! You said: hi there"
    status, text = post(f"{base}:generateContent?key=wrong", body, {})
    assert status == 401 and json.loads(text)["error"]["status"] == "UNAUTHENTICATED"
    # Without alt=sse the stream is one JSON array, element by element.
    status, text = post(f"{base}:streamGenerateContent", body, {"x-goog-api-key": CLIENT_KEY})
    assert status == 200, text
    chunks = json.loads(text)
    said = "".join(p.get("text", "") for c in chunks for p in c["candidates"][0]["content"]["parts"])
    assert said == "Hello from mock! You said: hi there"
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP" and chunks[-1]["usageMetadata"]["totalTokenCount"] > 0


def test_safety_settings_reach_gemini_and_are_refused_elsewhere(client, mock):
    safety = [types.SafetySetting(category="HARM_CATEGORY_HATE_SPEECH", threshold="BLOCK_LOW_AND_ABOVE")]
    cfg = types.GenerateContentConfig(safety_settings=safety)
    r = client.models.generate_content(model="gemini-2.5-flash", contents="hi there", config=cfg)
    assert r.text == "Hello from mock! You said: hi there"
    assert mock.requests()[-1]["body"]["safetySettings"][0]["threshold"] == "BLOCK_LOW_AND_ABOVE"
    with pytest.raises(errors.ClientError) as e:
        client.models.generate_content(model="claude-sonnet-4-5", contents="hi", config=cfg)
    assert e.value.code == 400 and "safetySettings" in e.value.message


def test_a_stream_that_breaks_ends_in_an_error(client, mock):
    mock.fault(cut_after_chunks=3)
    text = ""
    with pytest.raises(errors.APIError):
        for chunk in client.models.generate_content_stream(model="gpt-4o-mini", contents="hi there"):
            text += chunk.text or ""
    assert text == "Hello from "
