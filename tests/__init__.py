"""The talkpipe-async test suite."""
