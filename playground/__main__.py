"""python -m playground [--port P] [--no-browser] [--verbose]: serve the page on 127.0.0.1 and open it."""

from __future__ import annotations

import argparse
import os
import sys
import webbrowser

from playground.server import Server


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m playground", description=__doc__)
    parser.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (0: any free port); default 8765")
    parser.add_argument("--no-browser", action="store_true", help="print the address instead of opening a browser")
    parser.add_argument("--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be in [0, 65535], got {args.port}")
    try:
        server = Server(args.port, verbose=args.verbose)
    except OSError as error:
        print(f"cannot listen on 127.0.0.1:{args.port} ({error.strerror}); choose another --port", file=sys.stderr)
        return 2
    print(f"playground: serving {server.url} (Ctrl-C stops)", flush=True)
    if not args.no_browser:
        webbrowser.open(server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("\nplayground: stopped", flush=True)
    finally:
        server.session.close(timeout=10)
        server.server_close()
    if server.session.worker.is_alive():
        # the trainer is inside a compilation that cannot be interrupted; nothing is left to save (exports are
        # written when asked for), and tearing JAX down under a running thread can hang: leave at once
        print("playground: the trainer was still compiling; exiting without waiting for it", flush=True)
        os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
