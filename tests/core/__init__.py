"""Tests of the core: pipelines, stages, runs, cleanup, errors, statistics, the public face."""
