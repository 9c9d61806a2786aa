"""`python -m classifycloud` = the `classifycloud` command."""
import sys

from classifycloud.cli import main

sys.exit(main())
