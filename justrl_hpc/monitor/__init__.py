"""The monitor: reads a run folder, raises alerts, never touches the job."""
