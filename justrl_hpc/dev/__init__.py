"""This machine only: what lets the whole suite run on a host without GPUs (the CPU backend for verl)."""
