"""The bucket (R2 / S3 or the local folder): backends, batches in it (list, publish), rclone, job files."""
