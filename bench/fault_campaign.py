"""The fault campaign on the real local S3, MLflow and Ray: prints what each fault did.

    python bench/fault_campaign.py            # ~15 min on 2 cores: 10 kills, S3 and MLflow outages, a crashing trial

It runs tests/jobs/test_fault_campaign.py (the `campaign` marker, left out of `make test`), whose tests
assert the outcomes and print the figures: the steps of the 10 kills and where each resumed, the
weight difference to an unkilled run, and the S3, MLflow and Tune outcomes.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

if __name__ == "__main__":
    done = subprocess.run([sys.executable, "-m", "pytest", "-m", "campaign", "-s", "-q", "-p", "no:cacheprovider",
                           "tests/jobs/test_fault_campaign.py", *sys.argv[1:]], cwd=ROOT)
    sys.exit(done.returncode)
