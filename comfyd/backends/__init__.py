"""Backends behind the engine's interfaces (`comfyd.engine.interfaces`).

Embedded ones live here (SQLite job store and queue, local files, Prometheus text, webhooks);
the AWS ones (S3, DynamoDB, SQS, SNS, CloudWatch, STS) in `backends/aws/`. Which ones a process
uses is decided in one place, `comfyd.runtime`.
"""
