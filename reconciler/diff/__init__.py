"""Plan x Snapshot -> verdicts: desired volumes, contexts, rules and their judgement. Pure."""
