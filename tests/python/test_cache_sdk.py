"""The response cache and the data guardrails through the official SDKs: an answer the OpenAI
SDK paid for is served from the cache to the Anthropic SDK and as streams, `x-relais-cache` and
`age` saying so, and never to another key (each static key is its own team); a payment card is
refused as each SDK's own bad-request error, naming the class and never the number; masked
values never reach the vendor and come back, JSON and streams, without the SDKs noticing."""

import json
import uuid

import anthropic
import openai
import pytest

from conftest import CLIENT_KEY, OTHER_KEY


def test_an_answer_paid_once_is_served_to_every_sdk_and_stays_with_its_key(relais_url, mock):
    question = f"cache question {uuid.uuid4().hex[:8]}"
    # No sampling parameters: the Anthropic SDK's 2.x line no longer sends `temperature`, and
    # an unsampled request is cached by default.
    ask = {"model": "cached", "max_tokens": 30,
           "messages": [{"role": "user", "content": question}]}
    oa = openai.OpenAI(base_url=f"{relais_url}/v1", api_key=CLIENT_KEY, max_retries=0)
    raw = oa.chat.completions.with_raw_response.create(**ask)
    assert raw.headers["x-relais-cache"] == "miss"
    first = raw.parse().choices[0].message.content
    assert question in first

    claude = anthropic.Anthropic(base_url=relais_url, api_key=CLIENT_KEY, max_retries=0)
    raw = claude.messages.with_raw_response.create(**ask)
    assert raw.headers["x-relais-cache"] == "hit"
    assert 0 <= int(raw.headers["age"]) < 120
    assert raw.parse().content[0].text == first

    # Streams replayed from the entry, read by each SDK's own stream reader.
    with oa.chat.completions.with_streaming_response.create(stream=True, **ask) as resp:
        assert resp.headers["x-relais-cache"] == "hit"
        text = "".join(c.choices[0].delta.content or "" for c in resp.parse() if c.choices)
    assert text == first
    with claude.messages.stream(**ask) as stream:
        assert "".join(stream.text_stream) == first

    upstream = [r for r in mock.requests() if question in json.dumps(r)]
    assert len(upstream) == 1, "only the first request went upstream"

    other = openai.OpenAI(base_url=f"{relais_url}/v1", api_key=OTHER_KEY, max_retries=0)
    raw = other.chat.completions.with_raw_response.create(**ask)
    assert raw.headers["x-relais-cache"] == "miss", "another key's entry is not this key's"
    assert len([r for r in mock.requests() if question in json.dumps(r)]) == 2

    # The client says no: nothing read.
    raw = oa.chat.completions.with_raw_response.create(extra_headers={"cache-control": "no-store"}, **ask)
    assert raw.headers["x-relais-cache"] == "bypass"
    assert len([r for r in mock.requests() if question in json.dumps(r)]) == 3


CARD = "4111 1111 1111 1111"


def test_a_blocked_class_is_each_sdks_bad_request_error(relais_url, mock):
    oa = openai.OpenAI(base_url=f"{relais_url}/v1", api_key=CLIENT_KEY, max_retries=0)
    with pytest.raises(openai.BadRequestError) as e:
        oa.chat.completions.create(model="guarded", max_tokens=20,
                                   messages=[{"role": "user", "content": f"refund card {CARD}"}])
    assert e.value.code == "guardrail_blocked"
    assert "payment_card" in str(e.value) and CARD not in str(e.value)
    claude = anthropic.Anthropic(base_url=relais_url, api_key=CLIENT_KEY, max_retries=0)
    with pytest.raises(anthropic.BadRequestError) as e:
        claude.messages.create(model="guarded", max_tokens=20,
                               messages=[{"role": "user", "content": f"refund card {CARD}"}])
    assert "payment_card" in str(e.value) and CARD not in str(e.value)
    assert not any(CARD in json.dumps(r) for r in mock.requests()), "the card went upstream"
    ok = oa.chat.completions.create(model="guarded", max_tokens=20,
                                    messages=[{"role": "user", "content": "refund order 12345678"}])
    assert ok.choices[0].message.content


EMAIL = "jane.doe@example.com"
IBAN = "FR1420041010050500013M02606"


def test_masked_values_come_back_to_each_sdk_and_never_reach_the_vendor(relais_url, mock):
    tag = uuid.uuid4().hex[:8]
    prompt = f"ticket {tag}: write to {EMAIL} about IBAN {IBAN}, then copy {EMAIL}"
    said = f"Hello from mock! You said: {prompt}"
    messages = [{"role": "user", "content": prompt}]
    oa = openai.OpenAI(base_url=f"{relais_url}/v1", api_key=CLIENT_KEY, max_retries=0)
    answer = oa.chat.completions.create(model="guarded", max_tokens=60, messages=messages)
    assert answer.choices[0].message.content == said
    stream = oa.chat.completions.create(model="guarded", max_tokens=61, messages=messages, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == said
    claude = anthropic.Anthropic(base_url=relais_url, api_key=CLIENT_KEY, max_retries=0)
    assert claude.messages.create(model="guarded", max_tokens=62, messages=messages).content[0].text == said
    with claude.messages.stream(model="guarded", max_tokens=63, messages=messages) as s:
        assert "".join(s.text_stream) == said
    seen = [json.dumps(r) for r in mock.requests() if tag in json.dumps(r)]
    assert len(seen) == 4
    for body in seen:
        assert "[EMAIL_1]" in body and "[IBAN_1]" in body, body
        assert EMAIL not in body and IBAN not in body, "a masked value went upstream"
