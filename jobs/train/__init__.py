"""The training job: Ray Train DDP of ISRN over S3 shards, tracked in MLflow."""
