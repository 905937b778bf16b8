"""The genart sidecar: serves genart_core's engines to Blender over a local socket.

The server process (this package minus `worker`) owns sockets, the job store and
supervision and never imports torch; engines run in `sidecar.worker`, a child process.
"""
