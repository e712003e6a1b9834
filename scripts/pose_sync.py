#!/usr/bin/env python3
"""Entry point the plan names: `python scripts/pose_sync.py <command>` (same as `pose-sync`)."""

import sys
from pathlib import Path

# Run from a checkout without installing: make the package beside this file importable.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from pose_factory.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
