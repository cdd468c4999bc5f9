"""The S3 store (`storage.backend: s3`, the `s3` extra): any S3-compatible engine."""
