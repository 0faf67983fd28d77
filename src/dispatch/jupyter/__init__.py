"""Remote Jupyter sessions: plan, scripts, parsing, plain and SLURM hosts, file sync."""
