"""Helpers shared by the test suites (unit, env, cluster): one copy each."""
