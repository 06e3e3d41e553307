"""`python -m justrl_hpc.monitor.agent`: the node agent (sampler.py), as every chunk starts it on its node."""

import sys

from justrl_hpc.monitor.agent.sampler import main

sys.exit(main())
