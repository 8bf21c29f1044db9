"""Tests of the blocking wrapper and the hosts sync users run it in."""
