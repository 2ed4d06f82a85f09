import sys

from orthanc_plugin.worker.main import main

sys.exit(main())
