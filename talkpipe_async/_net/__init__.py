"""The transport layer every network stage stands on (private).

``framing``: :class:`~talkpipe_async.sources.LineFramer`,
:class:`~talkpipe_async.sources.NetStats` and the stream errors;
``connect``: TCP/TLS and Unix connections; ``tls``: a server's clean TLS
close; ``http``: the httpx client a stage borrows or owns; ``websocket``:
the pull-driven WebSocket session shared by the WebSocket source and sink.
Sources and sinks import these modules by name; the public names are
re-exported by :mod:`talkpipe_async.sources` and :mod:`talkpipe_async.sinks`.
"""
