import sys

from justrl_hpc.dev.soak.run import main

sys.exit(main())
