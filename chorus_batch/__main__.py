import sys

from .cli import main

if __name__ == "__main__":  # guarded: worker processes re-import this module on Windows
    sys.exit(main())
