"""Build a text-classification task offline: Debian package descriptions labelled with their archive section.

The command lives in megabert/cli/build_package_task.py; installed, it is also the console script `megabert-build-package-task`.
"""

import sys

from megabert.cli.build_package_task import main

if __name__ == "__main__":
    sys.exit(main())
