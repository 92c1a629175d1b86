"""peftbench's runner: one Hydra run -> one record in the results store, and the reports built on them."""
