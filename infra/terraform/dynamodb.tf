# API keys and the usage log (webserver/auth.py, webserver/keys.py, webserver/usage.py).
# Both tables: on-demand capacity, point-in-time recovery, encrypted with a
# customer-managed KMS key. Names mirror webserver/keys.py and webserver/usage.py.

resource "aws_kms_key" "tables" {
  description             = "${var.prefix}: encrypts the API-key and usage tables"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid       = "AccountAdministers"
        Effect    = "Allow"
        Principal = { AWS = "arn:${local.partition}:iam::${local.account_id}:root" }
        Action    = "kms:*"
        Resource  = "*"
      },
      {
        # DynamoDB uses the key on behalf of principals of this account only.
        Sid       = "DynamoDBUse"
        Effect    = "Allow"
        Principal = { AWS = "*" }
        Action    = ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:CreateGrant", "kms:DescribeKey"]
        Resource  = "*"
        Condition = {
          StringEquals = {
            "kms:CallerAccount" = local.account_id
            "kms:ViaService"    = "dynamodb.${local.region}.amazonaws.com"
          }
        }
      },
    ]
  })
}

resource "aws_kms_alias" "tables" {
  name          = "alias/${var.prefix}-tables"
  target_key_id = aws_kms_key.tables.key_id
}

# One item per key: key_id (partition), key_hash (SHA-256), owner, created_at, revoked_at,
# rate_limit, burst, monthly_quota and one calls_<YYYY>_<MM> counter per month.
resource "aws_dynamodb_table" "api_keys" {
  name                        = "${var.prefix}-api-keys"
  billing_mode                = "PAY_PER_REQUEST"
  hash_key                    = "key_id"
  deletion_protection_enabled = var.table_deletion_protection

  attribute {
    name = "key_id"
    type = "S"
  }

  point_in_time_recovery {
    enabled = true
  }

  server_side_encryption {
    enabled     = true
    kms_key_arn = aws_kms_key.tables.arn
  }
}

# One item per API call: day (UTC date, partition) + sk ("<epoch ms>#<request id>"); expires by TTL.
resource "aws_dynamodb_table" "usage" {
  name                        = "${var.prefix}-usage"
  billing_mode                = "PAY_PER_REQUEST"
  hash_key                    = "day"
  range_key                   = "sk"
  deletion_protection_enabled = var.table_deletion_protection

  attribute {
    name = "day"
    type = "S"
  }

  attribute {
    name = "sk"
    type = "S"
  }

  ttl {
    attribute_name = "expires_at"
    enabled        = true
  }

  point_in_time_recovery {
    enabled = true
  }

  server_side_encryption {
    enabled     = true
    kms_key_arn = aws_kms_key.tables.arn
  }
}
