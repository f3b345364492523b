"""Loopback latency and throughput of a running sidecar's /v1/gate (and canned-reply) endpoints.

Usage: start ``gatekeeper serve --catalog intents/telecom_zh.yaml`` and run
``python benchmarks/sidecar_latency.py [--url http://127.0.0.1:8080]``.
Sequential requests measure single-request latency; the concurrent burst
measures throughput with micro-batching (compare ``gatekeeper_batch_size``).
Bounded: a fixed number of requests, each with a timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import httpx

MESSAGES = ["我这个月话费怎么扣了这么多", "今天天气怎么样", "宽带又断网了", "怎么开通国际漫游", "推荐几部好看的电影",
            "what's the weather like tomorrow?", "帮我查下流量还剩多少", "我要投诉你们的服务"]


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000  # noqa: E731
    mean = statistics.mean(ordered) * 1000
    return f"p50 {pick(0.5):.1f} ms  p95 {pick(0.95):.1f} ms  p99 {pick(0.99):.1f} ms  mean {mean:.1f} ms"


def sequential(url: str, path: str, body_of, count: int) -> str:
    samples = []
    with httpx.Client(base_url=url, timeout=10) as client:
        for i in range(count + 10):
            started = time.perf_counter()
            client.post(path, json=body_of(MESSAGES[i % len(MESSAGES)])).raise_for_status()
            if i >= 10:  # the first few warm the connection
                samples.append(time.perf_counter() - started)
    return percentiles(samples)


async def burst(url: str, concurrency: int, total: int) -> str:
    async with httpx.AsyncClient(base_url=url, timeout=30,
                                 limits=httpx.Limits(max_connections=concurrency)) as client:
        semaphore = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            async with semaphore:
                response = await client.post("/v1/gate", json={"text": f"{MESSAGES[i % len(MESSAGES)]} {i}"})
                response.raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(total)))
        elapsed = time.perf_counter() - started
    return f"{total} requests, {concurrency} concurrent: {total / elapsed:.0f} req/s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--count", type=int, default=300)
    args = parser.parse_args()
    print("/v1/gate sequential:           ", sequential(args.url, "/v1/gate", lambda t: {"text": t}, args.count))
    chat = lambda t: {"model": "m", "messages": [{"role": "user", "content": t}]}  # noqa: E731
    print("/v1/chat/completions sequential:", sequential(args.url, "/v1/chat/completions", chat, args.count),
          "(off-topic: canned reply; on-topic: upstream round trip included)")
    for concurrency in (1, 8, 32):
        print("/v1/gate burst:                ", asyncio.run(burst(args.url, concurrency, 400)))
    metrics = httpx.get(f"{args.url}/metrics", timeout=10).text
    sums = {line.split()[0]: float(line.split()[1]) for line in metrics.splitlines()
            if line.startswith(("gatekeeper_batch_size_sum", "gatekeeper_batch_size_count"))}
    print(f"mean micro-batch size over the run: "
          f"{sums['gatekeeper_batch_size_sum'] / max(sums['gatekeeper_batch_size_count'], 1):.2f}")


if __name__ == "__main__":
    main()
