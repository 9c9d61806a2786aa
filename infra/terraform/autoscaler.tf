# The autoscaler (classifycloud-autoscaler.service, fleet = asg) on one small
# instance; an auto scaling group of exactly one replaces it if it dies. With the
# worker groups it ticks every 2 s and keeps busy workers under 35 % of the fleet (the asg rows
# of docs/AUTOSCALING.md).

locals {
  autoscaler_env = {
    CLASSIFYCLOUD_FLEET              = var.autoscaler_fleet
    CLASSIFYCLOUD_ASG_NAMES          = "${local.worker_group_names.warm},${local.worker_group_names.spot}"
    CLASSIFYCLOUD_TICK_S             = "2"
    CLASSIFYCLOUD_TARGET_UTILIZATION = "0.35"
    CLASSIFYCLOUD_LAUNCH_TEMPLATE    = local.worker_launch_template_name
    CLASSIFYCLOUD_POOL_TAG           = local.pool_tag_value
    CLASSIFYCLOUD_MIN_WORKERS        = tostring(var.min_workers)
    CLASSIFYCLOUD_MAX_WORKERS        = tostring(var.max_workers)
    CLASSIFYCLOUD_POLICY             = var.scaling_policy
    CLASSIFYCLOUD_LATENCY_BUDGET_S   = tostring(var.latency_budget_s)
  }
}

resource "aws_autoscaling_group" "autoscaler" {
  name                      = "${var.prefix}-autoscaler"
  min_size                  = 1
  max_size                  = 1
  desired_capacity          = 1
  vpc_zone_identifier       = aws_subnet.private[*].id
  health_check_type         = "EC2"
  health_check_grace_period = 120

  launch_template {
    id      = aws_launch_template.service["autoscaler"].id
    version = aws_launch_template.service["autoscaler"].latest_version
  }

  tag {
    key                 = "Name"
    value               = "${var.prefix}-autoscaler"
    propagate_at_launch = true
  }
}
