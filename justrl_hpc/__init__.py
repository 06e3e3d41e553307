"""justrl-hpc: the JustRL recipe as resumable Slurm chunks, and a monitor that alerts without intervening."""

__version__ = "0.1.0"
