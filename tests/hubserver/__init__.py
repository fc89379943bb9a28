"""A loopback Hugging Face Hub for tests: the part of the Hub HTTP API that huggingface_hub and datasets use.

A real HTTP/1.1 server on 127.0.0.1, run in a thread, which the unmodified `huggingface_hub` and
`datasets` clients talk to through `HF_ENDPOINT` (the `hub_server` and `hub_env` fixtures of
tests/conftest.py). Tests import it as `hubserver`: pytest's default "prepend" import mode puts tests/
on sys.path, as it does for tests/tiny.py. Split by concern, one module each:

- storage:   users, repos, commits and blobs, git-like (any branch, tag or commit sha resolves to its content)
- cards:     card metadata checked with the Hub's rules, on validate-yaml and on every commit of a README.md
- eval_results: a model's `.eval_results/*.yaml` checked and read as the model page shows them
- repos:     whoami-v2, repos/create, model/dataset info and revision info, refs, tag, commit history
- uploads:   preupload, the LFS batch API and upload, commit (NDJSON)
- downloads: tree, paths-info, resolve (HEAD/GET with X-Repo-Commit, ETag and Range)
- routes:    the URL table; server: the HTTP server, the request log and fault injection (`inject()`)

Errors carry `X-Error-Code` as the Hub's do, which is what the client maps to its exception types.
"""

from .server import HubServer

__all__ = ["HubServer"]
