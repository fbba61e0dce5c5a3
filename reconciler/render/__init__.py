"""Verdicts -> manifests: the Jinja sandbox, destination names, DataVolumes, VM patches and
their proven inverses. Pure but for reading template files."""
