"""``python -m distill3d.cli``, as the service's load test starts ``distill3d serve``."""

import sys

from . import main

sys.exit(main())
