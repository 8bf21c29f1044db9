"""Tests of the operators, family by family."""
