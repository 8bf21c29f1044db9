"""Tests of the broker connectors and scale-out, against real redis-server and nats-server."""
