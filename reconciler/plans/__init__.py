"""Plan files -> validated ``model.Plan`` values (reads files; no cluster)."""
