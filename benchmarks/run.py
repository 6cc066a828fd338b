"""Run every benchmark (``benchmarks/bench_*.py``) in turn; each prints ratios measured in the same run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

here = Path(__file__).parent
selected = sys.argv[1:]
status = 0
for script in sorted(here.glob("bench_*.py")):
    if selected and not any(s in script.stem for s in selected):
        continue
    print(f"\n=== {script.stem} ===", flush=True)
    status |= subprocess.call([sys.executable, str(script)])
sys.exit(status)
