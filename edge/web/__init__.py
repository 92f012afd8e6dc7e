"""The edge bundles in a web page: `python -m edge.web --bundle DIR` (see README.md here).

The page (static/) runs the bundle in the browser with LiteRT.js and a WebAssembly
SentencePiece, both from npm (package.json, installed by `npm ci` into node_modules/);
server.py only serves files.
"""
