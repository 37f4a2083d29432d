"""Issue 6: with one of two vendors down for the whole run, a bounded load of mixed streaming and
non-streaming requests through the official OpenAI SDK completes with 100% success.

The route `vendor-down` lists a deployment whose vendor refuses every connection (nothing listens
on its port) ahead of a healthy backup. The SDK's own retries are off, so every success is the
gateway's doing.
"""

from concurrent.futures import ThreadPoolExecutor

from openai import OpenAI

from conftest import CLIENT_KEY

REQUESTS = 240
WORKERS = 8


def one(client: OpenAI, i: int) -> tuple[str, str]:
    words = f"request number {i}"
    messages = [{"role": "user", "content": words}]
    if i % 2:
        stream = client.chat.completions.create(model="vendor-down", messages=messages, stream=True)
        text, finish = "", None
        for chunk in stream:
            for c in chunk.choices:
                text += c.delta.content or ""
                finish = c.finish_reason or finish
        assert finish == "stop"
        return text, "stream"
    raw = client.chat.completions.with_raw_response.create(model="vendor-down", messages=messages)
    assert raw.headers["x-relais-deployment"] == "backup/survivor"
    return raw.parse().choices[0].message.content, "whole"


def test_one_vendor_down_for_the_whole_run_loses_nothing(relais_url, mock):
    client = OpenAI(base_url=f"{relais_url}/v1", api_key=CLIENT_KEY, max_retries=0, timeout=30)
    with ThreadPoolExecutor(WORKERS) as pool:
        results = list(pool.map(lambda i: one(client, i), range(REQUESTS)))
    assert len(results) == REQUESTS
    for i, (text, _) in enumerate(results):
        assert text == f"Hello from mock! You said: request number {i}"
    assert sum(1 for _, kind in results if kind == "stream") == REQUESTS // 2
    # Only the backup's model reached the mock (the other vendor is unreachable).
    models = {r["body"]["model"] for r in mock.requests()}
    assert models == {"survivor"}
