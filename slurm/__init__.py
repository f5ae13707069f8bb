"""sbatch templates rendered by `pretrain-launch cluster=slurm` (launch/slurm.py); shipped as package data."""
