# Shared lookups and the names every other file uses. The naming rules mirror
# shared/naming.py exactly; tests/test_infra_crosscheck.py derives both and compares.

data "aws_caller_identity" "current" {}

data "aws_partition" "current" {}

data "aws_region" "current" {}

module "naming" {
  source = "./modules/naming"

  prefix      = var.prefix
  services    = local.packaged_services
  bucket_name = var.bucket_name
}

data "aws_availability_zones" "available" {
  #checkov:skip=CKV_AWS_394:main.tf takes slice(names, 0, az_count) of the name-sorted list; a newly added zone sorts after the existing ones and does not change the selection.
  state = "available"
}

locals {
  # The packaged catalogue's services get Terraform-managed queues and alarms. Services added later by an
  # S3 entry (models/<service>/entry.yaml) get their queue from `classifycloud train`/push or the autoscaler:
  # no variable lists services, so adding one needs no plan, no apply and no AMI rebuild.
  packaged_services = sort(keys(yamldecode(file("${path.module}/../../shared/services.yaml")).services))

  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition
  region     = data.aws_region.current.name

  # shared/naming.py and Settings.bucket_name / pool_tag_value, through modules/naming.
  request_queue_names = module.naming.request_queue_names
  dlq_names           = module.naming.dlq_names
  bulk_queue_names    = module.naming.bulk_queue_names
  bulk_dlq_names      = module.naming.bulk_dlq_names
  terminate_queue     = module.naming.terminate_queue
  reply_queue_prefix  = module.naming.reply_queue_prefix
  bucket_name         = module.naming.bucket_name
  pool_tag_value      = module.naming.pool_tag_value
  log_group_names     = module.naming.log_group_names

  azs = slice(data.aws_availability_zones.available.names, 0, var.az_count)

  tags = merge({ "classifycloud:stack" = var.prefix }, var.tags)

  # The stack's public names: workers refuse image URLs (and redirects) to them, the web builds links on them.
  public_hosts = distinct(concat([lower(aws_lb.web.dns_name)], [for h in var.public_hostnames : lower(h)]))

  # CLASSIFYCLOUD_* settings every component reads (names: shared.config.env_names()).
  common_env = {
    CLASSIFYCLOUD_PREFIX                    = var.prefix
    CLASSIFYCLOUD_BUCKET                    = local.bucket_name
    CLASSIFYCLOUD_REGION                    = var.region
    CLASSIFYCLOUD_VISIBILITY_TIMEOUT_S      = tostring(var.visibility_timeout_s)
    CLASSIFYCLOUD_MAX_RECEIVE_COUNT         = tostring(var.max_receive_count)
    CLASSIFYCLOUD_BULK_VISIBILITY_TIMEOUT_S = tostring(var.bulk_visibility_timeout_s)
    CLASSIFYCLOUD_METRICS_ENABLED           = "true"
    CLASSIFYCLOUD_METRICS_NAMESPACE         = var.metrics_namespace
    CLASSIFYCLOUD_LOG_LEVEL                 = var.log_level
    CLASSIFYCLOUD_OWN_HOSTS                 = join(",", local.public_hosts)
    AWS_REGION                              = var.region
  }
}

# User data per component: a cloud-config (templates/user-data.yaml.tftpl) that writes the settings
# file the systemd units read (EnvironmentFile=/etc/classifycloud/classifycloud.env), points the
# CloudWatch agent at the component's log file and starts the component's unit. One local per
# component, each built from that component's own settings only: a single map of all three made
# every launch template depend on every component's settings, and the autoscaler's name the worker
# template (a cycle). No secrets: instances get credentials from their instance profile.
locals {
  user_data_file = {
    env_file     = "/etc/classifycloud/classifycloud.env"
    agent_config = "/opt/aws/amazon-cloudwatch-agent/etc/amazon-cloudwatch-agent.json"
  }
  user_data_template = "${path.module}/templates/user-data.yaml.tftpl"

  worker_user_data = base64encode(templatefile(local.user_data_template, merge(local.user_data_file, {
    component = "worker", env = merge(local.common_env, local.worker_env), log_group = local.log_group_names.worker
  })))
  web_user_data = base64encode(templatefile(local.user_data_template, merge(local.user_data_file, {
    component = "web", env = merge(local.common_env, local.web_env), log_group = local.log_group_names.web
  })))
  autoscaler_user_data = base64encode(templatefile(local.user_data_template, merge(local.user_data_file, {
    component = "autoscaler", env = merge(local.common_env, local.autoscaler_env), log_group = local.log_group_names.autoscaler
  })))
}
