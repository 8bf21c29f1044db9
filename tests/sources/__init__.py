"""Tests of the sources: files and tails, sockets, HTTP, SSE, WebSocket, processes."""
