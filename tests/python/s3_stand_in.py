"""The S3 stand-in of the integration suite: moto's S3 server, with its writes made atomic.

moto checks a conditional put (`If-None-Match: *`, `If-Match`) and then stores the object
as two steps of a threaded server, so under load two racing creates of one key can both
win (tests/it/commits.rs caught 2 winners in a CI run; a probe under CPU load finds about
1 key in 100). Real S3 decides the race atomically, and Delta commits rely on it. This
launcher serves the same moto application, with every request that can change the store
holding one lock from the check to the write. Reads stay concurrent.

Usage: s3_stand_in.py HOST PORT (0 picks a free port). Prints `Running on http://HOST:PORT`
to stderr once it accepts connections.
"""

import os
import sys
import threading

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import make_server

READS = frozenset({"GET", "HEAD", "OPTIONS"})


class AtomicWrites:
    """A WSGI middleware that runs one mutating request at a time."""

    def __init__(self, app):
        self.app = app
        self.lock = threading.Lock()

    def __call__(self, environ, start_response):
        if environ.get("REQUEST_METHOD") in READS:
            return self.app(environ, start_response)
        with self.lock:
            # Drain the body under the lock: a lazy response could still be writing.
            return list(self.app(environ, start_response))


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    app = AtomicWrites(DomainDispatcherApplication(create_backend_app))
    server = make_server(host, port, app, threaded=True, request_handler=MotoRequestHandler)
    # moto builds some URLs (multipart, presigned) from MOTO_PORT.
    os.environ["MOTO_PORT"] = str(server.port)
    print(f"Running on http://{host}:{server.port}", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
