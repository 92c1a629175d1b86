"""The kernel every other package stands on: errors, validation, registries, paths, assets, the results store,
the run context and adapter merging. It imports nothing of `methods/`, `tasks/` or `bench/` (a test holds the
layers: core < methods, tasks < bench)."""
