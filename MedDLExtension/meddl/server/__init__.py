"""The MedDL server (`meddl serve`) and its client: MedDL worker requests run for remote clients over HTTP.

The server:
- `settings`: what `meddl serve` is started with; the model library it reads; its folders' names in messages.
- `keys`: API keys, stored as hashes, compared in constant time; the middleware that asks every request for one.
- `workdir`: the server's private work folder, marked and locked.
- `uploads`: uploads streamed to disk under server-made names, bounded; safe unpacking of zipped folders.
- `plan`: a submitted job's JSON checked field by field (`plan_job`).
- `prepare`: a checked job's folder and command line (`build_job`).
- `hiding`: server paths turned into the tokens a client sees.
- `jobs`: the jobs' states and the queue; `worker`: the `meddl worker` processes that run them.
- `sessions`: interactive sessions, kept by one worker across a client's jobs; `session_routes` their HTTP routes.
- `app`: the HTTP API (FastAPI, imported only when a server is created: the `server` extra); `answers` its replies.

The client (standard library only):
- `client`: `ServerClient`, which runs a request on a server as if it ran here.
- `transport`: its HTTP, the JSON answers and the errors they become.
- `exchange`: the mapping between local paths and the server's `upload:ID` and `file:...` tokens.
- `sending`: what a local input is uploaded as (folders and model files zipped).
- `interactive`: `RemoteInteractiveSession`, an interactive segmentation session kept open on a server, and
  `KeptSession`, the opening, reopening and closing both it and Slicer's effect use.

docs/SERVER.md describes the API.
"""
