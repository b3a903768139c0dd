"""Where photos come from and models go: the local filesystem or an S3-compatible object store."""
