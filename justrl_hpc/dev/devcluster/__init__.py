"""A real Slurm on this machine: munged, slurmctld and four slurmd posing as nodes n1..n4 (partition `dev`).

cluster.py brings it up and down (`up`, `down`, `lease`); status.py says where it stands; cli.py is
`justrl-hpc devcluster`. Below them: layout.py (nodes, daemons, the paths under the scratch folder), conf.py
(slurm.conf and /etc/slurm/slurm.conf), install.py (packages, folders, munge key), keeper.py (the process that
parents the daemons) and procs.py (pid files, signals, ports). `layout.slurm_env()` gives an environment whose
Slurm commands reach a given cluster.
"""
