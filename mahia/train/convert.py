"""`python -m mahia.train.convert DCP_DIR OUT.safetensors`: a distributed checkpoint as one safetensors checkpoint.

The output is what mahia.model.save_checkpoint writes (weights, model config and the run's metadata), so
`mahia-export --checkpoint OUT.safetensors` and `mahia-train --resume`-free tools read it like any other;
the optimiser state stays behind. Runs in one process without a process group, on any machine.
"""

from __future__ import annotations

from pathlib import Path

import click

from mahia.model import CheckpointError, ModelConfig, build_model, save_checkpoint
from mahia.model.checkpoint import CONFIG_KEY
from mahia.train.distributed import load_sharded, read_sharded_metadata


def convert(directory: Path, out: Path) -> Path:
    """Write the model of distributed checkpoint `directory` to the safetensors checkpoint `out`."""
    metadata = read_sharded_metadata(directory)
    try:
        config = ModelConfig.from_json(metadata[CONFIG_KEY])
    except ValueError as exc:
        raise CheckpointError(f"{directory}: bad model config in its metadata: {exc}") from None
    model = build_model(config)  # every weight is overwritten by the checkpoint's
    load_sharded(model, None, directory)
    return save_checkpoint(model, out, {k: v for k, v in metadata.items() if k != CONFIG_KEY})


@click.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
def main(directory: Path, out: Path) -> None:
    """Convert DIRECTORY (a last.dcp written by distributed mahia-train) to the safetensors checkpoint OUT."""
    try:
        path = convert(directory, out)
    except CheckpointError as exc:
        raise click.ClickException(str(exc)) from None
    metadata_step = read_sharded_metadata(directory).get("step", "?")
    click.echo(f"{path}: {directory} (step {metadata_step}) as one safetensors checkpoint")


if __name__ == "__main__":
    main()
