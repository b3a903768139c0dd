"""``python -m recon_service.cli``: the same as the ``recon`` command."""

import sys

from recon_service.cli.main import main

sys.exit(main())
