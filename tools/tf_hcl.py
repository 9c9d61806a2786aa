"""Terraform files read as plain dicts with python-hcl2, for the tests that check the configuration's content.

Whether the configuration is valid Terraform for the AWS provider is `terraform validate`'s job
(tests/test_infra_terraform.py runs it with the real provider); this module only parses.
"""
import json


def _unquote(text):
    """python-hcl2 >= 7 keeps the quotes of labels and string literals: '"aws_instance"' -> 'aws_instance'."""
    if isinstance(text, str) and len(text) >= 2 and text[0] == text[-1] == '"':
        try:
            return json.loads(text)
        except ValueError:
            return text[1:-1]
    return text


def normalise(node):
    """python-hcl2 output of any version as plain dicts/lists: unquoted keys and literals, no __is_block__."""
    if isinstance(node, dict):
        return {_unquote(k): normalise(v) for k, v in node.items() if k != "__is_block__"}
    if isinstance(node, list):
        return [normalise(v) for v in node]
    return _unquote(node)


def load_tf(path):
    """Parse one .tf file with python-hcl2 and normalise it (shared by tests/test_infra_*.py)."""
    import hcl2  # python-hcl2
    with open(path) as fh:
        return normalise(hcl2.load(fh))
