"""Pose Factory: version synthetic pose batches from R2 with git + DVC and hand them to ComfyUI."""

__version__ = "0.1.0"
