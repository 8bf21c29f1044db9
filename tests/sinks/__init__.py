"""Tests of the sinks: files, sockets, queues, the live fan-out hub, web responses."""
