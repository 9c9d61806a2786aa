"""The GPU worker: polls request queues, classifies, replies."""
