"""python -m edge.web --bundle DIR [--port N] [--host 127.0.0.1]: serve the web app.

Prints the URL (port 0 picks a free port), then serves until Ctrl-C. Exit code 2 when
the npm packages are not installed (the message says how to install them).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edge.web.server import SETUP_HINT, make_server, missing_npm_packages, url_of


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m edge.web",
        description="Serve an edge bundle and the page that runs it in the browser "
                    "(LiteRT.js, offline). Open the printed URL.")
    parser.add_argument("--bundle", required=True, help="the bundle directory "
                        "(artifacts/<experiment>/edge/bundle)")
    parser.add_argument("--port", type=int, default=8000, help="port (0: any free one; "
                        "default 8000)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default "
                        "127.0.0.1, this machine only)")
    parser.add_argument("--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    missing = missing_npm_packages()
    if missing:
        print(f"error: npm packages not installed: {', '.join(missing)}; {SETUP_HINT}",
              file=sys.stderr)
        return 2
    bundle = Path(args.bundle)
    if not (bundle / "manifest.json").is_file():
        # Served anyway: the page says in words what is missing.
        print(f"warning: no manifest.json in {bundle}; the page will report the bundle "
              "as missing", file=sys.stderr)
    try:
        server = make_server(bundle, port=args.port, host=args.host, verbose=args.verbose)
    except OSError as e:
        print(f"error: cannot listen on {args.host}:{args.port}: {e}", file=sys.stderr)
        return 2
    print(f"serving {bundle.resolve()} at {url_of(server)}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
