#!/usr/bin/env python3
"""What dvc.yaml's stages run: `python scripts/pose_stage.py validate|materialize ...` (see pose_factory/stages.py)."""

import sys
from pathlib import Path

# Run the code of this checkout (the files dvc.yaml lists as the stages' deps), installed or not.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from pose_factory.stages import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
