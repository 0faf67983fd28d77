"""Placement: hardware types, the YAML inventory, nvidia-smi parsing, probes, the solver."""
