"""``python -m recon_service`` starts the server (the same as the ``recon-service`` command)."""

import sys

from recon_service.api.server import main

if __name__ == "__main__":
    sys.exit(main())
