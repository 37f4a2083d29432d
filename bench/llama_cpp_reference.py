"""Reference figures for bench/local-inference: llama.cpp through llama-cpp-python, measured the
same way as relais's bench example (same prompts, greedy, same thread count, the GGUF's own chat
template), printed as one JSON line."""

import json
import resource
import sys
import time

from llama_cpp import Llama

model, threads, pp_tokens, gen_tokens = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
started = time.perf_counter()
llm = Llama(model_path=model, n_ctx=2048, n_threads=threads, n_threads_batch=threads, n_batch=512, verbose=False)
load_ms = (time.perf_counter() - started) * 1000
long_prompt = "the quick brown fox jumps over the lazy dog " * (pp_tokens // 9 + 1)
short_prompt = "Explain in a few sentences why the sky is blue."


def run(prompt, max_tokens):
    llm.reset()  # no prefix reuse between runs: every run reads its whole prompt
    t0 = time.perf_counter()
    first = last = None
    n = 0
    for chunk in llm.create_chat_completion(
        messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens, temperature=0, stream=True
    ):
        if chunk["choices"][0]["delta"].get("content"):
            now = time.perf_counter()
            first = first or now
            last = now
            n += 1
    return t0, first, last, n


def median(v):
    v = sorted(v)
    return v[len(v) // 2]


run(short_prompt, 8)  # warm-up
pp, tg, ttft = [], [], []
prompt_tokens = None
for _ in range(3):
    t0, first, _, _ = run(long_prompt, 1)
    prompt_tokens = llm.n_tokens - 1  # context holds the prompt plus the one sampled token
    pp.append(prompt_tokens / (first - t0))
    t0, first, last, n = run(short_prompt, gen_tokens)
    ttft.append((first - t0) * 1000)
    tg.append((n - 1) / (last - first))
print(json.dumps({
    "load_ms": round(load_ms),
    "pp_tokens": prompt_tokens,
    "pp_tok_s": round(median(pp), 1),
    "tg_tok_s": round(median(tg), 1),
    "ttft_ms": round(median(ttft), 1),
    "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
}))
