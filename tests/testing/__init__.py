"""Tests of talkpipe_async.testing, the kit for users' own pipeline tests."""
