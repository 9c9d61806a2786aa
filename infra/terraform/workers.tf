# The two worker Auto Scaling groups, built from the worker launch template (launch_templates.tf)
# (autoscaler/fleet/asg.py fills them in this order):
#   <prefix>-workers-warm  on-demand, with a warm pool of stopped instances: a burst is
#                          served after a resume (tens of seconds), not a cold boot. AWS
#                          allows a warm pool only on a group without a mixed-instances
#                          policy or spot, hence a group of its own.
#   <prefix>-workers       mixed instances: an on-demand base (min_workers) and spot above
#                          it across several GPU types, capacity rebalance, every private
#                          subnet / AZ.
# The autoscaler only raises desired capacity; a worker that obeys a terminate message
# removes its own instance with TerminateInstanceInAutoScalingGroup and a decrement
# (worker/asg.py), and holds scale-in protection while it holds work.

locals {
  worker_group_names = {
    warm = "${var.prefix}-workers-warm"
    spot = "${var.prefix}-workers"
  }

  # Both groups tag their instances alike: the pool tag scopes the autoscaler's IAM (iam_autoscaler.tf).
  worker_instance_tags = {
    (var.pool_tag_key) = local.pool_tag_value
    Name               = "${var.prefix}-worker"
  }

  worker_env = {
    CLASSIFYCLOUD_FLEET     = "asg"
    CLASSIFYCLOUD_DEVICE    = "auto"
    CLASSIFYCLOUD_MODEL_DIR = "/var/lib/classifycloud-worker/models"
    # The unit's sandbox gives it a private /tmp; keep downloaded s3:// weights across restarts.
    CLASSIFYCLOUD_WEIGHTS_CACHE = "/var/lib/classifycloud-worker/weights"
  }
}

# --- the burst group: on-demand with a warm pool ------------------------------------

resource "aws_autoscaling_group" "worker_warm" {
  name                      = local.worker_group_names.warm
  min_size                  = 0
  max_size                  = var.worker_warm_pool_size
  vpc_zone_identifier       = aws_subnet.private[*].id
  health_check_type         = "EC2"
  health_check_grace_period = var.worker_health_grace_s
  protect_from_scale_in     = false # workers protect themselves while they hold work
  termination_policies      = ["OldestLaunchTemplate", "Default"]

  launch_template {
    id      = aws_launch_template.worker.id
    version = aws_launch_template.worker.latest_version
  }

  # Sized from the policy's expected burst (variables.tf): every slot of this group has a
  # prepared instance, and reuse_on_scale_in returns a leaving instance to the pool.
  warm_pool {
    pool_state                  = var.worker_warm_pool_state
    min_size                    = var.worker_warm_pool_size
    max_group_prepared_capacity = var.worker_warm_pool_size

    instance_reuse_policy {
      reuse_on_scale_in = true
    }
  }

  dynamic "tag" {
    for_each = local.worker_instance_tags
    content {
      key                 = tag.key
      value               = tag.value
      propagate_at_launch = true
    }
  }

  # The autoscaler owns desired capacity; an apply must not reset it.
  lifecycle {
    ignore_changes = [desired_capacity]
  }
}

# --- the steady group: on-demand base, spot above, several GPU types -----------------

resource "aws_autoscaling_group" "worker" {
  name                      = local.worker_group_names.spot
  min_size                  = var.min_workers
  max_size                  = var.max_workers
  vpc_zone_identifier       = aws_subnet.private[*].id
  health_check_type         = "EC2"
  health_check_grace_period = var.worker_health_grace_s
  capacity_rebalance        = true # launch a replacement on a rebalance recommendation
  protect_from_scale_in     = false
  termination_policies      = ["OldestLaunchTemplate", "Default"]

  mixed_instances_policy {
    instances_distribution {
      on_demand_base_capacity                  = var.worker_on_demand_base
      on_demand_percentage_above_base_capacity = var.worker_on_demand_percentage_above_base
      spot_allocation_strategy                 = "price-capacity-optimized"
    }

    launch_template {
      launch_template_specification {
        launch_template_id = aws_launch_template.worker.id
        version            = aws_launch_template.worker.latest_version
      }

      dynamic "override" {
        for_each = var.worker_instance_types
        content {
          instance_type = override.value
        }
      }
    }
  }

  dynamic "tag" {
    for_each = local.worker_instance_tags
    content {
      key                 = tag.key
      value               = tag.value
      propagate_at_launch = true
    }
  }

  lifecycle {
    ignore_changes = [desired_capacity]
  }
}
