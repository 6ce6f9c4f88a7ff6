"""The Ray Serve application: an HTTP ingress that batches requests dynamically, in front of the model replicas.

Two deployments, so that a model replica's death costs no request:

- `Ingress` (FastAPI, no CPU reserved) answers /v1/classify and /healthz. It validates a request, splits its reviews
  into chunks of at most max_batch_size, and `@serve.batch` gathers the chunks of concurrent requests into batches
  of up to max_batch_size reviews (`batch_size_fn` counts reviews), waiting at most batch_wait_ms for a batch to
  fill. One model call per batch, not per request: each Serve hop costs CPU (benchmarks/serve_load.py on the shared
  2-core machine: proxy 9-10 ms and ingress 11-13 ms of CPU per request, model replica 39-48 ms with the fp8
  artifact), so batching before the model hop saves hops as well as model runs.
  Classification is a pure function of its input: a call that meets a dead replica is tried again on another
  (MODEL_ATTEMPTS tries) and only then answered 503 with Retry-After.
- `ReviewModel` (one CPU per replica) holds a verified, warmed-up `ReviewClassifier` and runs one batch per call.
  A replica joins the routing table only when its constructor returns: after the sha256 check and the warm-up, so
  a tampered artifact never serves. There are as many ingress replicas as model replicas, each with one batch in
  flight: a batch fills while the previous one runs.

Metrics (Ray's Prometheus endpoint, each name prefixed `ray_`; Serve adds deployment/replica/application tags):
mahia_requests_total{code}, mahia_request_latency_ms, mahia_reviews_total, mahia_model_retries_total (ingress),
mahia_batch_reviews, mahia_batch_latency_ms (model); Serve's own ray_serve_* request, latency and batch metrics
come beside them.
"""

# No `from __future__ import annotations` here: FastAPI reads the handlers' annotations at run time, inside a
# replica whose copy of the class sees only the module globals its code names.
import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import ray
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle
from ray.serve.metrics import Counter, Histogram

from mahia.data.features import ReviewRecord
from mahia.runtime.backends.onnxrt import OnnxRuntimeOptions
from mahia.serve.classifier import Prediction, ReviewClassifier
from mahia.serve.protocol import MAX_REVIEWS, RequestError, classify_response, parse_classify_request

APP_NAME = "mahia"
# Tries of one model call before the ingress answers 503: a replica killed mid-call fails the calls it had accepted
# with RayActorError (calls not yet accepted are re-routed by Serve itself); a later try goes to a live replica.
MODEL_ATTEMPTS = 4
RETRY_BACKOFF_S = 0.1
# Requests one ingress replica holds at once. Each waits without using the CPU, and batches only fill if enough
# requests are in flight: far above Serve's default of 5.
INGRESS_MAX_ONGOING = 256
# Calls one model replica accepts at once (they wait in its queue). Each ingress replica sends one batch at a time,
# so this is how many ingress replicas one model replica can serve before callers wait in their router, which
# backs off with growing pauses while every replica is full (at max_ongoing_requests 2 a first design served 6.7
# requests/s at batch size 1 and 32 clients, its replica idle between calls; benchmarks/serve_load.py).
MODEL_MAX_ONGOING = 32
LATENCY_BOUNDARIES_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000]


@dataclass(frozen=True)
class ServeConfig:
    """What `mahia-serve` deploys: the artifact, the backend, replicas and the batching policy."""

    artifact_dir: Path
    backend: str = "onnx"
    replicas: int = 1
    max_batch_size: int | None = None  # None: the artifact's largest exported batch
    batch_wait_ms: float = 5.0
    max_reviews: int = MAX_REVIEWS
    model_cpus: float = 1.0

    def batch_size_for(self, exported_max: int) -> int:
        """max_batch_size checked against the artifact's exported batch range."""
        size = exported_max if self.max_batch_size is None else self.max_batch_size
        if not 1 <= size <= exported_max:
            raise ValueError(f"--max-batch-size {size} is outside 1..{exported_max}, the batch range "
                             f"{self.artifact_dir.name} was exported for")
        return size


@dataclass(frozen=True)
class BatchResult:
    """A model call's answer: predictions in order, the artifact that computed them, and on which replica and node."""

    predictions: list[Prediction]
    artifact: str
    manifest_sha256: str
    replica: str
    node: str


# One constructor try at the first deploy: what fails there (a tampered file, a missing backend) does not heal by
# trying again, and the operator hears of it at once. Replicas that die later are replaced as usual.
@serve.deployment(name="ReviewModel", max_constructor_retry_count=1, health_check_period_s=10,
                  max_ongoing_requests=MODEL_MAX_ONGOING, logging_config={"enable_access_log": False})
class ReviewModel:
    """A verified artifact that classifies one batch of validated reviews per call."""

    def __init__(self, artifact_dir: str, backend: str, cpus: float) -> None:
        # the sha256 check and the warm-up
        self.classifier = ReviewClassifier.load(artifact_dir, backend, runtime_options(backend, cpus))
        self.replica = serve.get_replica_context().replica_id.unique_id
        self.node = ray.get_runtime_context().get_node_id()
        self.batch_reviews = Histogram("mahia_batch_reviews", description="Reviews per model batch.",
                                       boundaries=[1, 2, 4, 8, 16, 32, 64, 128])
        self.batch_latency = Histogram("mahia_batch_latency_ms", description="Inference time of one batch (ms).",
                                       boundaries=LATENCY_BOUNDARIES_MS)

    async def classify(self, records: list[ReviewRecord]) -> BatchResult:
        """Predictions for a batch, computed in one run padded to its bucket (in a thread: the replica stays
        responsive to Serve's calls meanwhile)."""
        start = time.perf_counter()
        predictions = await asyncio.to_thread(self.classifier.predict, records)
        self.batch_latency.observe(1000 * (time.perf_counter() - start))
        self.batch_reviews.observe(len(records))
        return BatchResult(predictions, self.classifier.artifact_id, self.classifier.manifest_sha256, self.replica,
                           self.node)

    def describe(self) -> dict[str, object]:
        """The loaded artifact, with this replica's id and node."""
        return {**self.classifier.describe(), "replica": self.replica, "node": self.node}

    def check_health(self) -> None:
        """Serve's periodic probe: the warm-up calls again (a broken session raises and the replica is replaced)."""
        self.classifier.warm_up()


def runtime_options(backend: str, cpus: float) -> OnnxRuntimeOptions | None:
    """A model replica's engine threads: as many as the CPUs it reserved, none spinning, because the proxy and the
    ingress need the other cycles (ONNX Runtime's default spins one thread per core: on 2 cores, batches filled
    for 30 ms, that cost the replica 18.6 ms of CPU per request instead of 10.1-11.8, mahia/serve/README.md
    "Load"). Other backends keep their engine's threading."""
    if backend != "onnx":
        return None
    return OnnxRuntimeOptions(intra_op_threads=max(1, round(cpus)), spin_wait=False)


api = FastAPI(title="mahia-serve", description="MAHIA-X review classifier on Ray Serve")


class ModelUnavailable(Exception):
    """No model replica answered a call within MODEL_ATTEMPTS tries."""


def _reviews_in(chunks: list[list[ReviewRecord]]) -> int:
    return sum(len(chunk) for chunk in chunks)


@serve.deployment(name="Ingress", max_ongoing_requests=INGRESS_MAX_ONGOING, ray_actor_options={"num_cpus": 0})
@serve.ingress(api)
class Ingress:
    """HTTP API: validation, dynamic batching, retries and the request metrics."""

    def __init__(self, model: DeploymentHandle, max_batch_size: int, batch_wait_s: float, max_reviews: int) -> None:
        self.model, self.max_batch_size, self.batch_wait_s = model, max_batch_size, batch_wait_s
        self.max_reviews = max_reviews
        self.classify_batch.set_max_batch_size(max_batch_size)
        self.classify_batch.set_batch_wait_timeout_s(batch_wait_s)
        self.requests = Counter("mahia_requests_total", description="HTTP requests answered, by status code.",
                                tag_keys=("code",))
        self.latency = Histogram("mahia_request_latency_ms", description="Time to answer a request (ms).",
                                 boundaries=LATENCY_BOUNDARIES_MS)
        self.reviews = Counter("mahia_reviews_total", description="Reviews classified.")
        self.retries = Counter("mahia_model_retries_total", description="Model calls tried again after a "
                                                                        "replica failed them.")

    @api.post("/v1/classify")
    async def classify(self, request: Request) -> JSONResponse:
        """{"reviews": [...]} -> {"artifact", "manifest_sha256", "predictions": [{"probability", "label"}]}."""
        start = time.perf_counter()
        try:
            records = parse_classify_request(await request.body(), self.max_reviews)
            step = self.max_batch_size
            results = await asyncio.gather(*(self.classify_batch(records[i:i + step])
                                             for i in range(0, len(records), step)))
        except RequestError as exc:
            return self._answer(exc.status, exc.body(), start)
        except ModelUnavailable as exc:
            return self._answer(503, {"error": {"status": 503, "field": "", "message": str(exc)}}, start,
                                {"Retry-After": "1"})
        predictions = [p for result in results for p in result.predictions]
        self.reviews.inc(len(predictions))
        headers = {"x-mahia-replica": ",".join(sorted({r.replica for r in results})),
                   "x-mahia-node": ",".join(sorted({r.node for r in results}))}
        body = classify_response(predictions, results[0].artifact, results[0].manifest_sha256)
        return self._answer(200, body, start, headers)

    @serve.batch(max_batch_size=1, batch_wait_timeout_s=0.0, batch_size_fn=_reviews_in)  # set in __init__
    async def classify_batch(self, chunks: list[list[ReviewRecord]]) -> list[BatchResult]:
        """One model call for the chunks of concurrent requests; each chunk gets its slice of the answer."""
        records = [record for chunk in chunks for record in chunk]
        batch = await self._with_retries(lambda: self.model.classify.remote(records))
        results, offset = [], 0
        for chunk in chunks:
            results.append(BatchResult(batch.predictions[offset:offset + len(chunk)], batch.artifact,
                                       batch.manifest_sha256, batch.replica, batch.node))
            offset += len(chunk)
        return results

    @api.get("/healthz")
    async def healthz(self) -> JSONResponse:
        """200 with the artifact's description once a model replica (verified and warmed up) answers, else 503."""
        try:
            described = await asyncio.wait_for(self._with_retries(lambda: self.model.describe.remote()), timeout=5.0)
        except (ModelUnavailable, TimeoutError) as exc:
            return JSONResponse({"status": "unavailable", "reason": str(exc) or "model did not answer in 5 s"},
                                status_code=503)
        return JSONResponse({"status": "ready", **described, "max_batch_size": self.max_batch_size,
                             "batch_wait_ms": 1000 * self.batch_wait_s})

    async def _with_retries(self, call: Callable[[], Awaitable]):  # type: ignore[no-untyped-def]
        failure: Exception | None = None
        for attempt in range(MODEL_ATTEMPTS):
            if attempt:
                self.retries.inc()
                await asyncio.sleep(RETRY_BACKOFF_S * 2 ** (attempt - 1))
            try:
                return await call()
            except (RayActorError, BackPressureError, DeploymentUnavailableError) as exc:
                failure = exc
        raise ModelUnavailable(f"no model replica answered after {MODEL_ATTEMPTS} tries "
                               f"({type(failure).__name__}); retry shortly")

    def _answer(self, status: int, body: dict, start: float, headers: dict[str, str] | None = None) -> JSONResponse:
        self.requests.inc(tags={"code": str(status)})
        self.latency.observe(1000 * (time.perf_counter() - start))
        return JSONResponse(body, status_code=status, headers=headers)


def build_app(config: ServeConfig, exported_batch_max: int) -> serve.Application:
    """The application graph for `serve.run`: Ingress -> ReviewModel, config.replicas replicas of each."""
    max_batch_size = config.batch_size_for(exported_batch_max)
    model = ReviewModel.options(num_replicas=config.replicas, ray_actor_options={"num_cpus": config.model_cpus}
                                ).bind(str(Path(config.artifact_dir).resolve()), config.backend, config.model_cpus)
    return Ingress.options(num_replicas=config.replicas).bind(model, max_batch_size, config.batch_wait_ms / 1000,
                                                              config.max_reviews)
