"""Values and pure helpers shared by every stage (standard library only; imports nothing else
of the reconciler)."""
