"""The clawpen daemon: supervises bots declared in clawpen.toml, serves the CLI on a Unix socket.

* :mod:`store`   SQLite (WAL) state: releases, bots, instances, events
* :mod:`rpc`     the JSON-lines protocol between CLI and daemon
* :mod:`runtime` one asyncio task per bot instance: start, watch, restart, stop
* :mod:`server`  the Unix-socket server and the operations behind every command
* :mod:`app`     the one place that builds and wires the daemon's objects
* :mod:`client`  the CLI side: connect (starting the daemon when needed) and call
"""
