"""`python -m dalle2_pytorch.app`: serves the web page (the same flags as `dream --serve`)."""

import sys

from dalle2_pytorch.app.server import main

if __name__ == "__main__":
    sys.exit(main())
