"""The `isrn` command-line tool.

Each subcommand lives in its own module under `jobs/commands/` and is imported only when it
runs, so `isrn --help` stays fast (torch, Ray and MLflow are not imported for it).

    isrn platform up            # local S3 (SeaweedFS), MLflow and Ray head on 127.0.0.1
    isrn data synth --out DIR   # a generated WIDER-format data set
    isrn shards build ...       # WebDataset shards in S3
    isrn train jobs/specs/smoke.yaml
"""

from __future__ import annotations

import importlib
import logging

import click

# name -> (module, attribute, one-line help shown by `isrn --help` without importing the module)
_COMMANDS: dict[str, tuple[str, str, str]] = {
    "platform": ("jobs.commands.platform_cmd", "platform", "Start, stop and inspect the local S3, MLflow and Ray head."),
    "data": ("jobs.commands.data", "data", "Generate WIDER-format data sets."),
    "shards": ("jobs.commands.shards", "shards", "Build and inspect WebDataset shards of WIDER FACE."),
    "evaluate": ("jobs.commands.evaluate", "evaluate",
                 "Official WIDER FACE AP of a predictions folder, or of a model on val shards."),
    "train": ("jobs.commands.train", "train", "Run a training job spec on the Ray cluster."),
    "submit": ("jobs.commands.submit", "submit", "Submit a job spec through the Ray Jobs API."),
    "jobs": ("jobs.commands.submit", "jobs", "List, follow and stop Ray jobs."),
    "tune": ("jobs.commands.tune", "tune", "Ray Tune search over normalisation and schedule."),
    "promote": ("jobs.commands.promote", "promote", "Register the best run's model and move the champion alias."),
    "detect": ("jobs.commands.detect", "detect", "Detect faces in images with a registered model."),
}


class _LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name in _COMMANDS if self._available(name)]

    @staticmethod
    def _available(name: str) -> bool:
        module, _, _ = _COMMANDS[name]
        return importlib.util.find_spec(module) is not None

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in _COMMANDS or not self._available(name):
            return None
        module, attribute, _ = _COMMANDS[name]
        return getattr(importlib.import_module(module), attribute)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, _COMMANDS[name][2]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log at DEBUG level.")
def main(verbose: bool) -> None:
    """ISRN face detection on Ray, S3 and MLflow.

    Typical session: `isrn platform up`, then `isrn train jobs/specs/demo.yaml`,
    then `isrn promote`.
    """
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


if __name__ == "__main__":
    main()
