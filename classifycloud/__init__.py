"""The composition root: the `classifycloud` CLI and the embedded local stack."""
