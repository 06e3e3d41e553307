"""The chaos soak (this machine only): a rehearsal on the dev cluster under a seeded schedule of faults,
judged from its run folder. `bash scripts/soak.sh [--seed S] [--chunks C]`."""
