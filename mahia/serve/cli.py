"""`mahia-serve ARTIFACT_DIR`: serve a verified artifact over HTTP on Ray Serve, or write a Triton model repository."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import click

from mahia.serve.protocol import MAX_REVIEWS

if TYPE_CHECKING:  # the app module imports Ray, which a --triton-repo run never needs
    from mahia.serve.app import ServeConfig

EXAMPLES = """\b
Examples:
  mahia-serve artifacts/small-fp8-adae6bd44a
  mahia-serve --replicas 2 --max-batch-size 16 --batch-wait-ms 5 --port 8000 artifacts/small-fp8-adae6bd44a
  mahia-serve --ray-address auto artifacts/...      # a cluster started with `ray start`
  mahia-serve --triton-repo model_repository artifacts/small-fp8-adae6bd44a
"""


@click.command(epilog=EXAMPLES)
@click.argument("artifact_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--backend", type=click.Choice(["onnx", "pt2"]), default="onnx", show_default=True,
              help="Which of the artifact's graphs the replicas run.")
@click.option("--replicas", type=click.IntRange(min=1), default=1, show_default=True,
              help="Model replicas (one CPU each).")
@click.option("--max-batch-size", type=click.IntRange(min=1), default=None,
              help="Reviews per model batch; 1 turns batching off. [default: the artifact's largest exported batch]")
@click.option("--batch-wait-ms", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="How long a batch waits to fill after its first review.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address the HTTP proxy listens on.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--metrics-port", type=click.IntRange(1, 65535), default=8080, show_default=True,
              help="Prometheus endpoint of this node's Ray metrics agent (a local Ray instance only).")
@click.option("--ray-address", default=None,
              help="Ray cluster to join ('auto': the one `ray start` began here); default: start a local instance.")
@click.option("--proxy-location", type=click.Choice(["EveryNode", "HeadOnly"]), default="EveryNode",
              show_default=True, help="Where Serve runs HTTP proxies.")
@click.option("--max-reviews", type=click.IntRange(min=1), default=MAX_REVIEWS, show_default=True,
              help="Reviews per request; more is answered 413.")
@click.option("--triton-repo", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write a Triton Inference Server model repository here and exit (nothing is served).")
@click.option("--triton-name", default=None, help="Model name in the Triton repository [default: the artifact's].")
def main(artifact_dir: Path, backend: str, replicas: int, max_batch_size: int | None, batch_wait_ms: float, host: str,
         port: int, metrics_port: int, ray_address: str | None, proxy_location: str, max_reviews: int,
         triton_repo: Path | None, triton_name: str | None) -> None:
    """Serve ARTIFACT_DIR (a `mahia-export` artifact): POST /v1/classify, GET /healthz; Ctrl-C stops."""
    import mahia.runtime

    if triton_repo is not None:
        from mahia.serve.triton import TritonRepositoryError, write_triton_repository

        try:
            models = write_triton_repository(artifact_dir, triton_repo, triton_name, int(batch_wait_ms * 1000))
        except (mahia.runtime.ArtifactIntegrityError, TritonRepositoryError, ValueError, OSError) as exc:
            raise click.ClickException(str(exc)) from None
        for model in models:
            click.echo(f"wrote {model}")
        click.echo(f"start it with: tritonserver --model-repository {triton_repo.resolve()}")
        return

    from mahia.serve.app import ServeConfig

    config = ServeConfig(artifact_dir.resolve(), backend, replicas, max_batch_size, batch_wait_ms, max_reviews)
    try:  # refuse a tampered artifact or a batch size it cannot run before any process starts
        deployment = mahia.runtime.load(config.artifact_dir, backend=backend)
        exported_batch_max = deployment.manifest.batch.max
        config.batch_size_for(exported_batch_max)
    except (mahia.runtime.ArtifactIntegrityError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    del deployment
    serve_until_stopped(config, exported_batch_max, host, port, metrics_port, ray_address, proxy_location)


def serve_until_stopped(config: ServeConfig, exported_batch_max: int, host: str, port: int, metrics_port: int,
                        ray_address: str | None, proxy_location: str) -> None:
    """Start Ray (or join `ray_address`), run the application, block until SIGINT or SIGTERM, then shut down."""
    import ray
    from ray import serve

    from mahia.serve.app import APP_NAME, build_app

    if ray_address is None:
        ray.init(address="local", include_dashboard=False, _metrics_export_port=metrics_port)
    else:
        ray.init(address=ray_address)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": host, "port": port}, proxy_location=proxy_location)
        serve.run(build_app(config, exported_batch_max), name=APP_NAME, route_prefix="/")
        click.echo(f"mahia-serve: {config.artifact_dir.name} ready at http://{host}:{port} "
                   f"(POST /v1/classify, GET /healthz)"
                   + (f"; metrics at http://127.0.0.1:{metrics_port}/metrics" if ray_address is None else ""))
        while not stop.wait(1.0):
            pass
    except RuntimeError as exc:  # serve.run: the application failed to deploy (its replicas name the reason)
        raise click.ClickException(f"the application did not start: {exc}") from None
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
