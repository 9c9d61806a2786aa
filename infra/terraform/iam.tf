# Least privilege, one role per component. This file: the roles, their instance profiles, the ARNs the
# grants name and the statements several roles share. Each holder's own grants are in a file of its own:
# iam_worker.tf, iam_web.tf, iam_autoscaler.tf, iam_operator.tf. Every action the Python code calls is
# checked against these documents by tests/test_infra_iam.py (it scans the code).

# request_queue_arns: every service's request queue (and its DLQ), packaged or added later by
# an S3 entry, granted by name prefix.
locals {
  sqs_arn_base       = "arn:${local.partition}:sqs:${local.region}:${local.account_id}"
  request_queue_arns = ["${local.sqs_arn_base}:${var.prefix}-requests-*"]
  # bulk_queue_arns: every service's bulk queue and bulk DLQ (issue 23), packaged or added later, by prefix.
  bulk_queue_arns = ["${local.sqs_arn_base}:${var.prefix}-bulk-*"]
  bulk_dlq_arns   = ["${local.sqs_arn_base}:${var.prefix}-bulk-*-dlq"]
  # SNS topics a client names in `notify` (docs/API.md): this account and region only, so a key
  # cannot make the stack publish into someone else's account.
  client_topic_arns = ["arn:${local.partition}:sns:${local.region}:${local.account_id}:*"]
  reply_queue_arns  = "${local.sqs_arn_base}:${local.reply_queue_prefix}*"
  log_group_arns    = { for c, name in local.log_group_names : c => "arn:${local.partition}:logs:${local.region}:${local.account_id}:log-group:${name}:*" }
  ec2_arn_base      = "arn:${local.partition}:ec2:${local.region}:${local.account_id}"
  components        = toset(["worker", "web", "autoscaler"])
}

data "aws_iam_policy_document" "ec2_assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "component" {
  for_each = local.components

  name               = "${var.prefix}-${each.key}"
  assume_role_policy = data.aws_iam_policy_document.ec2_assume.json
}

resource "aws_iam_instance_profile" "component" {
  for_each = local.components

  name = "${var.prefix}-${each.key}"
  role = aws_iam_role.component[each.key].name
}

resource "aws_iam_role_policy_attachment" "ssm" {
  for_each = var.enable_ssm ? local.components : toset([])

  role       = aws_iam_role.component[each.key].name
  policy_arn = "arn:${local.partition}:iam::aws:policy/AmazonSSMManagedInstanceCore"
}

# --- statements several roles share (merged in with source_policy_documents) --------------

data "aws_iam_policy_document" "put_metrics" {
  statement {
    sid       = "PutMetrics"
    actions   = ["cloudwatch:PutMetricData"]
    resources = ["*"] # PutMetricData has no resource-level permissions; the namespace condition narrows it.

    condition {
      test     = "StringEquals"
      variable = "cloudwatch:namespace"
      values   = [var.metrics_namespace]
    }
  }
}

# Listing grants: s3:ListBucket (or ListBucketVersions) on the bucket, narrowed to key prefixes. Every
# holder's statements are in this one list and written out by one generated document per holder, which
# the holder's own document merges in (sids stay unique across holders).
locals {
  bucket_listings = {
    # the live catalogue and the fleet's heartbeats (read_catalogue: web and autoscaler)
    read_catalogue = [
      { sid = "ListHeartbeatsAndModels", action = "s3:ListBucket", prefixes = ["heartbeats/", "heartbeats/*", "models/", "models/*"] },
    ]
    worker = [
      { sid = "ListModels", action = "s3:ListBucket", prefixes = ["models/", "models/*"] },
      # facesearch: a search lists the gallery's faces (worker/models/gallery.py)
      { sid = "ListFaceGalleries", action = "s3:ListBucket", prefixes = ["galleries/*"] },
    ]
    # DELETE /faces: every version and delete marker of a tenant's faces, and of an enrolment's photo
    # once it is answered (webserver/faces.py, webserver/jobs.py erase_upload)
    web = [
      { sid = "ListFaceVersions", action = "s3:ListBucketVersions", prefixes = ["galleries/*", "uploads/*"] },
      # GET /jobs: a key's own jobs, from its index (webserver/job_options.py)
      { sid = "ListJobIndex", action = "s3:ListBucket", prefixes = ["jobs/index/*"] },
    ]
    autoscaler = [
      { sid = "ListBatchWork", action = "s3:ListBucket", prefixes = ["batches-active/*", "notify/pending/*", "results/*", "batch-io/*"] },
      { sid = "ListVersionStats", action = "s3:ListBucket", prefixes = ["version-stats/*"] },
    ]
    operator_review = [
      { sid = "ListResults", action = "s3:ListBucket", prefixes = ["results/", "results/*", "shadow/", "shadow/*"] },
    ]
    operator_publish = [
      { sid = "ListServices", action = "s3:ListBucket", prefixes = ["models/", "models/*"] },
    ]
  }
}

data "aws_iam_policy_document" "bucket_listing" {
  for_each = local.bucket_listings

  dynamic "statement" {
    for_each = each.value
    content {
      sid       = statement.value.sid
      actions   = [statement.value.action]
      resources = [aws_s3_bucket.data.arn]

      condition {
        test     = "StringLike"
        variable = "s3:prefix"
        values   = statement.value.prefixes
      }
    }
  }
}

# The live catalogue and the fleet's heartbeats: list them, read services' entries (not their weights).
data "aws_iam_policy_document" "read_catalogue" {
  source_policy_documents = [data.aws_iam_policy_document.bucket_listing["read_catalogue"].json]
  statement {
    sid       = "ReadServiceEntries"
    actions   = ["s3:GetObject"]
    resources = ["${aws_s3_bucket.data.arn}/models/*/entry.yaml"]
  }
}

# The DynamoDB tables' customer key, only through DynamoDB.
data "aws_iam_policy_document" "use_table_key" {
  statement {
    sid       = "UseTableKey"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.tables.arn]

    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["dynamodb.${local.region}.amazonaws.com"]
    }
  }
}

# The two worker Auto Scaling groups (workers.tf): workers and the autoscaler act on them.
locals {
  worker_group_arns = [aws_autoscaling_group.worker_warm.arn, aws_autoscaling_group.worker.arn]
}
