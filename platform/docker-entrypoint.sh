#!/usr/bin/env bash
# Entrypoint of the ISRN platform image (platform/Dockerfile).
#
# Arguments that are not a program are `isrn` arguments, so the image runs the same command
# line as a laptop:
#   docker run IMAGE train jobs/specs/smoke.yaml   ->  isrn train jobs/specs/smoke.yaml
#   docker run IMAGE --help                        ->  isrn --help
# A program name runs that program, which is what KubeRay and the MLflow Deployment need:
#   docker run IMAGE ray start --head ...          ->  ray start --head ...
#   docker run IMAGE mlflow server ...             ->  mlflow server ...
set -euo pipefail

# `type -P` finds programs on PATH only: `jobs` and `eval` are shell builtins but isrn commands.
if [ "$#" -eq 0 ] || [ "${1#-}" != "$1" ] || [ -z "$(type -P "$1")" ]; then
    set -- isrn "$@"
fi
exec "$@"
