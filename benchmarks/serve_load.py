"""Load test of `mahia-serve`: C concurrent HTTP clients for T seconds, with dynamic batching on and off.

    nice python benchmarks/serve_load.py ARTIFACT_DIR --concurrency 32 --seconds 20 --max-batch-sizes 16,1
    python benchmarks/serve_load.py ARTIFACT_DIR --url http://127.0.0.1:8000   # a server already running

For each max batch size it starts `mahia-serve ARTIFACT_DIR --max-batch-size N` on 127.0.0.1 (one model replica),
waits for /healthz, then C clients (aiohttp, one connection each) send one real test-split review per request,
back to back, for T seconds; requests in flight at the end are awaited. It reports throughput, p50/p99 latency
and checks that every request was answered exactly once: one response per request id on the client, the
server's own count of 200s (Prometheus, ray_mahia_requests_total) equal to the client's, and every answer
equal to `Deployment.run` on the same review alone (max |difference| of the probability reported, at most
ANSWER_TOLERANCE); exit status 1 if a check fails. Beside them: reviews per model batch (server metrics), the CPU
time of the model, ingress and proxy processes per request (/proc), and the server's classifier alone in this
process (reviews/s one at a time and in batches, no Serve).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

ANSWER_TOLERANCE = 1e-5  # |probability served - probability of Deployment.run alone|; padding is masked


def test_records(count: int) -> list[dict]:
    """The first `count` test-split reviews as client records (None where the data file has no value)."""
    import pyarrow.parquet as pq

    from mahia.data import default_data_path, load_reviews
    from mahia.data.features import DATA_COLUMNS

    rows = load_reviews()["test"].row_ids[:count]
    table = pq.read_table(default_data_path(), columns=list(DATA_COLUMNS.values())).to_pydict()
    return [{field: table[column][int(i)] for field, column in DATA_COLUMNS.items()} for i in rows]


def reference(artifact: Path, records: list[dict]) -> np.ndarray:
    """P(recommended) of each record alone, unpadded, through Deployment.run."""
    import mahia.runtime
    from mahia.data.features import parse_review
    from mahia.serve.classifier import load_feature_spec, predictions, text_budget

    deployment = mahia.runtime.load(artifact)
    spec, _ = load_feature_spec(artifact, deployment.manifest)
    max_len, vocab = text_budget(deployment.manifest), deployment.config.vocab_size
    return np.array([predictions(deployment.run(spec.model_inputs([parse_review(r)], max_len, vocab)))[0].probability
                     for r in records])


def model_alone(artifact: Path, records: list[dict], batch: int) -> dict:
    """Reviews/s of the server's own classifier in this process, no Serve, with a model replica's engine threads:
    one review at a time, and batches of `batch` (median of 5 rounds each, after a warm-up round)."""
    import statistics

    from mahia.data.features import parse_review
    from mahia.serve.app import runtime_options
    from mahia.serve.classifier import ReviewClassifier

    classifier = ReviewClassifier.load(artifact, "onnx", runtime_options("onnx", 1.0))
    parsed = [parse_review(r) for r in records]
    chunks = [parsed[i:i + batch] for i in range(0, len(parsed) - batch + 1, batch)] or [parsed[:batch]]

    def rate(groups: list[list]) -> float:
        rounds = []
        for _ in range(6):
            start = time.perf_counter()
            for group in groups:
                classifier.predict(group)
            rounds.append(sum(len(g) for g in groups) / (time.perf_counter() - start))
        return round(statistics.median(rounds[1:]), 1)

    return {"batch_1_reviews_per_s": rate([[r] for r in parsed[:batch]]), f"batch_{batch}_reviews_per_s": rate(chunks)}


async def load(url: str, records: list[dict], concurrency: int, seconds: float) -> dict:
    """Run the clients; per request id: (status, latency s, probability or None)."""
    import aiohttp

    answers: dict[int, list[tuple[int, float, float | None]]] = {}
    issued = 0
    deadline = time.perf_counter() + seconds

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal issued
        while time.perf_counter() < deadline:
            request_id, issued = issued, issued + 1
            body = {"reviews": [records[request_id % len(records)]]}
            start = time.perf_counter()
            async with session.post(f"{url}/v1/classify", json=body) as response:
                data = await response.json(content_type=None)
                probability = data["predictions"][0]["probability"] if response.status == 200 else None
                answers.setdefault(request_id, []).append((response.status, time.perf_counter() - start, probability))

    start = time.perf_counter()
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency), timeout=timeout) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    return {"answers": answers, "issued": issued, "elapsed": time.perf_counter() - start}


def ray_cpu_seconds() -> dict[str, float]:
    """CPU seconds (user + system) so far of this machine's Serve processes, by role: Linux /proc, 0 elsewhere."""
    roles = {"ReviewModel": "model", "Ingress": "ingress", "ProxyActor": "proxy"}
    totals = dict.fromkeys(roles.values(), 0.0)
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            command = (stat.parent / "cmdline").read_bytes().split(b"\0")[0].decode()
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        for name, role in roles.items():
            if command.startswith("ray::") and name in command:
                totals[role] += (int(fields[11]) + int(fields[12])) / tick
    return totals


def metric(metrics_url: str, name: str, label: str = "") -> float:
    """A metric summed over its series (replicas) on the Prometheus endpoint, optionally only series with `label`."""
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") and label in line)


def served_200s(metrics_url: str) -> float:
    """The server's count of requests answered 200 (ray_mahia_requests_total{code="200"})."""
    return metric(metrics_url, "ray_mahia_requests_total", 'code="200"')


def settled_200s(metrics_url: str, expected: float, wait_s: float = 40) -> float:
    """The server's count of 200s once it reaches `expected` or stops moving (metrics are exported periodically)."""
    deadline, last = time.monotonic() + wait_s, -1.0
    while time.monotonic() < deadline:
        count = served_200s(metrics_url)
        if count == expected:
            return count
        last = count
        time.sleep(2)
    return last


def wait_healthy(url: str, server: subprocess.Popen | None, wait_s: float = 300) -> dict:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if server is not None and server.poll() is not None:
            raise SystemExit(f"mahia-serve exited with {server.returncode} before it was healthy")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=5) as response:
                return json.loads(response.read())
        except OSError:
            time.sleep(1)
    raise SystemExit(f"{url}/healthz did not answer 200 within {wait_s:.0f} s")


def measure(url: str, metrics_url: str, records: list[dict], want: np.ndarray, concurrency: int,
            seconds: float) -> dict:
    health = wait_healthy(url, None)
    before = served_200s(metrics_url)
    batches_before = metric(metrics_url, "ray_mahia_batch_reviews_count")
    cpu_before = ray_cpu_seconds()
    run = asyncio.run(load(url, records, concurrency, seconds))
    cpu = {role: seconds - cpu_before[role] for role, seconds in ray_cpu_seconds().items()}
    answers = run["answers"]
    once = sorted(answers) == list(range(run["issued"])) and all(len(a) == 1 for a in answers.values())
    ok = [(i, a[0]) for i, a in answers.items() if a[0][0] == 200]
    latencies = np.array([a[0][1] for a in answers.values()]) * 1000
    differences = [abs(a[2] - want[i % len(records)]) for i, a in ok]
    server_count = settled_200s(metrics_url, before + len(ok)) - before
    batches = metric(metrics_url, "ray_mahia_batch_reviews_count") - batches_before
    return {"max_batch_size": health["max_batch_size"], "batch_wait_ms": health["batch_wait_ms"],
            "concurrency": concurrency, "seconds": round(run["elapsed"], 2), "requests": run["issued"],
            "answered_200": len(ok), "other_statuses": sorted({a[0][0] for a in answers.values()} - {200}),
            "answered_exactly_once": once, "server_200s": server_count,
            "throughput_rps": round(len(ok) / run["elapsed"], 1),
            "p50_ms": round(float(np.percentile(latencies, 50)), 1),
            "p99_ms": round(float(np.percentile(latencies, 99)), 1),
            "reviews_per_batch": round(server_count / batches, 2) if batches else None,
            # CPU of the Serve processes on this machine per answered request, by role (0 if not on this machine)
            "cpu_ms_per_request": {role: round(1000 * t / max(len(ok), 1), 1) for role, t in cpu.items()},
            "max_abs_probability_difference": float(max(differences)) if differences else None,
            "load_average_after": [round(v, 2) for v in os.getloadavg()]}  # the machine is shared: context


def start_server(artifact: Path, max_batch_size: int, batch_wait_ms: float, port: int,
                 metrics_port: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "mahia.serve.cli", str(artifact), "--max-batch-size", str(max_batch_size),
               "--batch-wait-ms", f"{batch_wait_ms:g}", "--port", str(port), "--metrics-port", str(metrics_port)]
    print("$", " ".join(command[2:]), flush=True)
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def stop_server(server: subprocess.Popen) -> None:
    server.send_signal(signal.SIGINT)
    try:
        server.wait(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact", type=Path, help="the artifact the server runs (for the reference answers)")
    parser.add_argument("--url", help="measure this running server instead of starting one per batch size")
    parser.add_argument("--metrics-url", default="http://127.0.0.1:8080/metrics")
    parser.add_argument("--max-batch-sizes", default="16,1", help="servers to start, one after the other")
    parser.add_argument("--batch-wait-ms", type=float, default=5.0, help="of the servers it starts")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--reviews", type=int, default=64, help="distinct test-split reviews the clients cycle")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()

    records = test_records(args.reviews)
    want = reference(args.artifact, records)
    alone = model_alone(args.artifact, records, max(int(s) for s in args.max_batch_sizes.split(",")))
    print("model alone (no Serve):", json.dumps(alone), flush=True)
    results = []
    if args.url:
        results.append(measure(args.url.rstrip("/"), args.metrics_url, records, want, args.concurrency, args.seconds))
    else:
        metrics_port = int(re.search(r":(\d+)/", args.metrics_url).group(1))
        for size in (int(s) for s in args.max_batch_sizes.split(",")):
            server = start_server(args.artifact, size, args.batch_wait_ms, args.port, metrics_port)
            try:
                url = f"http://127.0.0.1:{args.port}"
                wait_healthy(url, server)
                results.append(measure(url, args.metrics_url, records, want, args.concurrency, args.seconds))
            finally:
                stop_server(server)
            print(json.dumps(results[-1]), flush=True)
    print(f"\n{args.artifact.name}, {args.concurrency} clients x {args.seconds:g} s, one review per request")
    print("| max batch | requests/s | p50 ms | p99 ms | requests | answered once | server 200s | reviews/batch "
          "| CPU ms/request: model, ingress, proxy | max prob. diff |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        cpu = ", ".join(f"{v:g}" for v in r["cpu_ms_per_request"].values())
        print(f"| {r['max_batch_size']} | {r['throughput_rps']} | {r['p50_ms']} | {r['p99_ms']} | {r['requests']} | "
              f"{r['answered_exactly_once'] and not r['other_statuses']} | {r['server_200s']:g} | "
              f"{r['reviews_per_batch']} | {cpu} | {r['max_abs_probability_difference']:.1e} |")
    if len(results) == 2:
        print(f"throughput ratio {results[0]['max_batch_size']} vs {results[1]['max_batch_size']}: "
              f"{results[0]['throughput_rps'] / results[1]['throughput_rps']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"model_alone": alone, "served": results}, indent=1))
    failed = [f"max batch {r['max_batch_size']}" for r in results
              if not r["answered_exactly_once"] or r["other_statuses"] or r["server_200s"] != r["answered_200"]
              or (r["max_abs_probability_difference"] or 0) > ANSWER_TOLERANCE]
    if failed:
        raise SystemExit(f"checks failed for {', '.join(failed)}: see the table")


if __name__ == "__main__":
    main()
