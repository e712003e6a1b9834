"""Talking to other services: ComfyUI and RunPod."""
