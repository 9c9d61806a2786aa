# The worker launch template. The autoscaler (fleet = ec2) calls run_instances with
# it and the pool tag; a worker that obeys a terminate message exits 0, the entry
# script powers the instance off, and shutdown behaviour = terminate ends it.

locals {
  worker_env = {
    CLASSIFYCLOUD_DEVICE    = "auto"
    CLASSIFYCLOUD_MODEL_DIR = "/var/lib/classifycloud-worker/models"
    # The unit's sandbox gives it a private /tmp; keep downloaded s3:// weights across restarts.
    CLASSIFYCLOUD_WEIGHTS_CACHE = "/var/lib/classifycloud-worker/weights"
  }
}

resource "aws_launch_template" "worker" {
  name                                 = "${var.prefix}-worker"
  description                          = "ClassifyCloud GPU worker (classifycloud-worker.service)"
  image_id                             = var.ami_id
  instance_type                        = var.worker_instance_type
  instance_initiated_shutdown_behavior = "terminate"
  ebs_optimized                        = true
  update_default_version               = true
  user_data                            = local.user_data["worker"]

  iam_instance_profile {
    arn = aws_iam_instance_profile.component["worker"].arn
  }

  # The first private subnet: run_instances names only the template.
  network_interfaces {
    subnet_id                   = aws_subnet.private[0].id
    security_groups             = [aws_security_group.worker.id]
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
    instance_metadata_tags      = "disabled"
  }

  monitoring {
    enabled = true
  }

  tag_specifications {
    resource_type = "instance"
    tags          = merge(local.tags, { Name = "${var.prefix}-worker", (var.pool_tag_key) = local.pool_tag_value })
  }

  tag_specifications {
    resource_type = "volume"
    tags          = merge(local.tags, { Name = "${var.prefix}-worker", (var.pool_tag_key) = local.pool_tag_value })
  }
}
