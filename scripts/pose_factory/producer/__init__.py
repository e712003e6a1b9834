"""The pod side: the synthetic generator, its figure, the Blender path and the worker that publishes."""
