"""For developers and the demo: the local S3 server (SeaweedFS) and the demo loop."""
