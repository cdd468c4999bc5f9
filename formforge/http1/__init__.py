"""FormForge's own HTTP/1.1 server connection, under Tornado's Application and handlers.

`formforge serve` reads and parses HTTP/1.1 itself: an asyncio Protocol per connection,
llhttp (through httptools) as the parser, and Tornado's public connection interfaces
(`HTTPServerConnectionDelegate`, `HTTPConnection`, `HTTPMessageDelegate`) up to the same
Application and `@stream_request_body` handlers a host's `HTTPServer` drives. Why: a small
PATCH cost 0.33 ms of server CPU in Tornado's stock HTTP/1 path alone (tusd's whole request
costs 0.37), and 200 uploads at once kept a read buffer of up to 1 MiB per connection.
docs/benchmarks.md has the figures.
"""
