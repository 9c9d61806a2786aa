# The autoscaler (classifycloud-autoscaler.service, fleet = ec2) on one small
# instance; an auto scaling group of exactly one replaces it if it dies.

locals {
  autoscaler_env = {
    CLASSIFYCLOUD_FLEET            = "ec2"
    CLASSIFYCLOUD_LAUNCH_TEMPLATE  = aws_launch_template.worker.id
    CLASSIFYCLOUD_POOL_TAG         = local.pool_tag_value
    CLASSIFYCLOUD_MIN_WORKERS      = tostring(var.min_workers)
    CLASSIFYCLOUD_MAX_WORKERS      = tostring(var.max_workers)
    CLASSIFYCLOUD_POLICY           = var.scaling_policy
    CLASSIFYCLOUD_LATENCY_BUDGET_S = tostring(var.latency_budget_s)
  }
}

resource "aws_launch_template" "autoscaler" {
  name                   = "${var.prefix}-autoscaler"
  description            = "ClassifyCloud autoscaler (classifycloud-autoscaler.service)"
  image_id               = var.ami_id
  instance_type          = var.autoscaler_instance_type
  ebs_optimized          = true
  update_default_version = true
  user_data              = local.user_data["autoscaler"]

  iam_instance_profile {
    arn = aws_iam_instance_profile.component["autoscaler"].arn
  }

  network_interfaces {
    security_groups             = [aws_security_group.autoscaler.id]
    associate_public_ip_address = false
    delete_on_termination       = true
  }

  block_device_mappings {
    device_name = "/dev/sda1"

    ebs {
      volume_size           = var.root_volume_gb
      volume_type           = "gp3"
      encrypted             = true
      delete_on_termination = true
    }
  }

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  monitoring {
    enabled = true
  }

  tag_specifications {
    resource_type = "instance"
    tags          = merge(local.tags, { Name = "${var.prefix}-autoscaler" })
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
    id      = aws_launch_template.autoscaler.id
    version = aws_launch_template.autoscaler.latest_version
  }

  tag {
    key                 = "Name"
    value               = "${var.prefix}-autoscaler"
    propagate_at_launch = true
  }
}
