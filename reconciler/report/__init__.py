"""Values -> documents (JSON/YAML) and text for people. Pure; the only place findings
become text."""
