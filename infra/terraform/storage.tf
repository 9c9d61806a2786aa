# One private bucket: uploads/ (client images), results/ (reply records), jobs/
# (job markers), heartbeats/ (worker liveness), models/ (weights the workers sync) and
# galleries/<tenant>/ (enrolled face embeddings, per API key).

resource "aws_s3_bucket" "data" {
  #checkov:skip=CKV_AWS_18:Access logs would need a second bucket; every access is by our own roles and CloudTrail records them.
  #checkov:skip=CKV_AWS_144:Cross-region replication doubles storage for transient uploads/results; weights are rebuilt from their source.
  #checkov:skip=CKV_AWS_145:SSE-S3 (AES256) encrypts at rest; a customer KMS key adds a per-request charge and a key policy on every role.
  #checkov:skip=CKV2_AWS_62:Nothing consumes bucket events; workers are driven by SQS messages.
  bucket = local.bucket_name
}

resource "aws_s3_bucket_ownership_controls" "data" {
  bucket = aws_s3_bucket.data.id

  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "data" {
  bucket = aws_s3_bucket.data.id

  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_server_side_encryption_configuration" "data" {
  bucket = aws_s3_bucket.data.id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "AES256"
    }
  }
}

# Versioning protects the model weights from an accidental overwrite; old versions of
# uploads/results expire with the lifecycle rules below.
resource "aws_s3_bucket_versioning" "data" {
  bucket = aws_s3_bucket.data.id

  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "data" {
  bucket = aws_s3_bucket.data.id

  rule {
    id     = "expire-uploads"
    status = "Enabled"

    filter {
      prefix = "uploads/"
    }

    expiration {
      days = var.upload_expiry_days
    }

    noncurrent_version_expiration {
      noncurrent_days = 1
    }
  }

  dynamic "rule" {
    for_each = toset(["results/", "jobs/"])

    content {
      id     = "expire-${trimsuffix(rule.value, "/")}"
      status = "Enabled"

      filter {
        prefix = rule.value
      }

      expiration {
        days = var.result_expiry_days
      }

      noncurrent_version_expiration {
        noncurrent_days = 1
      }
    }
  }

  rule {
    id     = "expire-heartbeats"
    status = "Enabled"

    filter {
      prefix = "heartbeats/"
    }

    expiration {
      days = 1
    }

    noncurrent_version_expiration {
      noncurrent_days = 1
    }
  }

  rule {
    id     = "abort-incomplete-uploads"
    status = "Enabled"

    filter {}

    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }
  }

  # Face embeddings are biometric data: DELETE /faces erases every version at once; this rule is the
  # backstop (a version left by an overwrite or a failed erasure is gone a day later) and the retention
  # limit (gallery_retention_days; 0 keeps a face until it is erased).
  rule {
    id     = "expire-gallery-versions"
    status = "Enabled"

    filter {
      prefix = "galleries/"
    }

    dynamic "expiration" {
      for_each = var.gallery_retention_days > 0 ? [var.gallery_retention_days] : []

      content {
        days = expiration.value
      }
    }

    noncurrent_version_expiration {
      noncurrent_days = 1
    }
  }

  rule {
    id     = "expire-old-model-versions"
    status = "Enabled"

    filter {
      prefix = "models/"
    }

    noncurrent_version_expiration {
      noncurrent_days = 30
    }
  }
}

# TLS only: deny any request that arrives over plain HTTP.
data "aws_iam_policy_document" "bucket" {
  statement {
    sid     = "DenyInsecureTransport"
    effect  = "Deny"
    actions = ["s3:*"]
    resources = [
      aws_s3_bucket.data.arn,
      "${aws_s3_bucket.data.arn}/*",
    ]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "data" {
  bucket = aws_s3_bucket.data.id
  policy = data.aws_iam_policy_document.bucket.json

  depends_on = [aws_s3_bucket_public_access_block.data]
}
