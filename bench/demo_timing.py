"""Where `make demo`'s time goes, from a fresh clone: one row per command make runs.

    .venv/bin/python bench/demo_timing.py                          # this checkout's HEAD
    .venv/bin/python bench/demo_timing.py --ref main --ref HEAD    # two commits one after the other, and their ratio

Clones the repository at `--ref` into a temporary folder and runs `make demo` there with a fresh
platform state (`XDG_STATE_HOME` in the temporary folder: an empty S3, MLflow and Ray, as on a
new machine); pip's cache is whatever this machine has (warm, normally). Each line make prints is
stamped with the seconds since the start; the rows are the commands make echoes (the recipe lines
of `make -n demo`), each timed until the next, and the `isrn train demo` row is split further by its
own log lines (data generation, shard build, the run until its model is logged). Prints the table
and the total, then stops the clone's platform and deletes the clone (`--keep` keeps the last).

The local platform uses its default ports, so nothing else may hold them: `isrn platform down`
first. The machine's load is part of every figure: compare rows of one run, or runs made side by side.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Lines of `isrn train`'s log that open a sub-phase of the training command.
TRAIN_MARKS = (
    ("  generate the data set", re.compile(r"generating a WIDER-format data set")),
    ("  build the shards", re.compile(r"building train shards")),
    ("  train (Ray Train start, epochs, evaluation)", re.compile(r"MLflow run \S+: http")),
    ("  export and log the model", re.compile(r"epoch (\d+)/\1 val AP")),  # the last epoch's evaluation
    ("  finish", re.compile(r"logged model models:/")),
)


def recipe_lines(clone: Path, env: dict[str, str]) -> list[str]:
    """The commands `make demo` will echo, in order (make -n prints @-silenced ones too: harmless)."""
    out = subprocess.run(["make", "-n", "demo"], cwd=clone, env=env, capture_output=True, text=True, check=True).stdout
    return [line.strip() for line in out.splitlines() if line.strip() and not line.startswith("#")]


def time_make_demo(ref: str, keep: bool, log_path: Path | None) -> tuple[str, int, float, list[tuple[str, float]]]:
    """Run `make demo` in a fresh clone of `ref`: (commit, exit code, seconds, [(phase, start second)])."""
    tmp = Path(tempfile.mkdtemp(prefix="isrn-demo-timing-"))
    clone = tmp / "repo"
    commit = subprocess.run(["git", "rev-parse", ref], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    subprocess.run(["git", "clone", "--quiet", "--no-checkout", str(REPO), str(clone)], check=True)
    subprocess.run(["git", "checkout", "--quiet", commit], cwd=clone, check=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ISRN_", "MLFLOW_", "AWS_", "RAY_", "VIRTUAL_ENV"))}
    env["XDG_STATE_HOME"] = str(tmp / "state")
    commands = recipe_lines(clone, env)

    rows: list[tuple[str, float]] = []
    log = log_path.open("w") if log_path else None
    start = time.monotonic()
    proc = subprocess.Popen(["make", "demo"], cwd=clone, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1)
    assert proc.stdout is not None
    next_command, in_train = 0, False
    for line in proc.stdout:
        now = time.monotonic() - start
        stripped = line.strip()
        if log:
            log.write(f"{now:8.1f} {line}")
        for i in range(next_command, len(commands)):
            if stripped == commands[i]:
                rows.append((commands[i], now))
                next_command, in_train = i + 1, " train " in f" {commands[i]} "
                break
        else:
            marks = [label for label, pattern in TRAIN_MARKS if in_train and pattern.search(stripped)]
            if marks:
                rows.append((marks[0], now))
    rc = proc.wait()
    total = time.monotonic() - start
    if log:
        log.close()
    if keep:
        print(f"kept: {clone} (platform state {env['XDG_STATE_HOME']}; stop it with "
              f"XDG_STATE_HOME={env['XDG_STATE_HOME']} {clone}/.venv/bin/isrn platform down)")
    else:
        subprocess.run([str(clone / ".venv/bin/isrn"), "platform", "down", "--purge"], cwd=clone, env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(tmp, ignore_errors=True)
    return commit, rc, total, rows


def machine() -> str:
    """The CPU this ran on: the same commit took 417 s on one machine of this kind and 959 s on
    another, and trained another champion, so a figure is only compared with figures of its machine."""
    names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
             if line.startswith("model name")] if Path("/proc/cpuinfo").is_file() else []
    import torch  # which kernels PyTorch picks (AVX2, AVX512, ...): they sum in different orders

    return (f"{len(os.sched_getaffinity(0))} cores of {names[0] if names else 'an unknown CPU'}, "
            f"PyTorch CPU capability {torch.backends.cpu.get_cpu_capability()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ref", action="append", help="commit or branch to clone (repeat to time several, one "
                        "after the other; default HEAD)")
    parser.add_argument("--keep", action="store_true", help="keep the last clone and its platform running")
    parser.add_argument("--log", type=Path, help="also write make's stamped output here (REF appended to the name)")
    args = parser.parse_args()

    refs = args.ref or ["HEAD"]
    totals = []
    for i, ref in enumerate(refs):
        log = args.log.with_name(f"{args.log.name}.{ref.replace('/', '_')}") if args.log else None
        commit, rc, total, rows = time_make_demo(ref, args.keep and i == len(refs) - 1, log)
        totals.append((ref, commit, rc, total))
        print(f"make demo at {ref} ({commit[:12]}) from a fresh clone: exit {rc}, {total:.0f} s ({total / 60:.1f} min), "
              f"load average {os.getloadavg()[0]:.1f} at the end, on {machine()}")
        print(f"{'seconds':>8} {'share':>6}  command")
        ends = [r[1] for r in rows[1:]] + [total]
        for (phase, begin), end in zip(rows, ends):
            print(f"{end - begin:8.1f} {100 * (end - begin) / total:5.1f}%  {phase[:110]}")
        print(flush=True)
    if len(totals) > 1:
        first = totals[0][3]
        for ref, commit, rc, total in totals[1:]:
            print(f"{ref} / {totals[0][0]}: {total / first:.3f} of the time")
    sys.exit(max(t[2] for t in totals))


if __name__ == "__main__":
    main()
