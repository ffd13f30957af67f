"""Starting a run's agents: locally, through Slurm, or described for Kubernetes."""
