"""peftbench's Hydra sweeper (`hydra/sweeper=peftbench`): Hydra loads sweepers only from `hydra_plugins`."""
