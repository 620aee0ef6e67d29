"""The MedDL server (`meddl serve`) and its client: MedDL worker requests run for remote clients over HTTP.

- `keys`: API keys, stored as hashes, compared in constant time.
- `uploads`: uploads streamed to disk under server-made names, bounded; safe unpacking of zipped folders.
- `jobs`: the work folder, the queue and the `meddl worker` processes.
- `app`: the HTTP API (FastAPI, imported only when a server is created: the `server` extra).
- `client`: `ServerClient`, standard library only, which runs a request on a server as if it ran here.

docs/SERVER.md describes the API.
"""
