"""The URL table: which (method, path) reaches which Hub operation, in the order the paths are tried.

Every operation is a function of the Hub state and the request's parts that returns (status, headers,
body); this module only matches the path and holds the state's lock around the call.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs, unquote, urlsplit

from . import cards, downloads, repos, uploads
from .storage import Hub, HubError


class Router:
    """Maps (method, path) to a Hub operation and returns (status, headers, body)."""

    def __init__(self, hub: Hub):
        self.hub = hub
        repo = r"(?P<ns>[^/]+)/(?P<name>[^/]+)"
        api = rf"/api/(?P<type>models|datasets|spaces)/{repo}"
        self.routes = [
            ("GET", r"/api/whoami-v2", repos.whoami),
            ("POST", r"/api/repos/create", repos.create_repo),
            ("POST", r"/api/validate-yaml", cards.validate_yaml),
            ("GET", rf"{api}", repos.info),
            ("GET", rf"{api}/revision/(?P<rev>[^/]+)", repos.info),
            ("GET", rf"{api}/refs", repos.refs),
            ("GET", rf"{api}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?", downloads.tree),
            ("POST", rf"{api}/paths-info/(?P<rev>[^/]+)", downloads.paths_info),
            ("GET", rf"{api}/commits/(?P<rev>[^/]+)", repos.commits),
            ("POST", rf"{api}/preupload/(?P<rev>[^/]+)", uploads.preupload),
            ("POST", rf"{api}/commit/(?P<rev>[^/]+)", uploads.commit),
            ("POST", rf"{api}/tag/(?P<rev>[^/]+)", repos.tag),
            ("POST", rf"/(?:(?P<type>datasets|spaces)/)?{repo}\.git/info/lfs/objects/batch", uploads.lfs_batch),
            ("PUT", r"/lfs-upload/(?P<oid>[0-9a-f]{64})", uploads.lfs_upload),
            ("HEAD", rf"/(?:(?P<type>datasets|spaces)/)?{repo}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", downloads.resolve),
            ("GET", rf"/(?:(?P<type>datasets|spaces)/)?{repo}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", downloads.resolve),
        ]

    def handle(self, method: str, raw_path: str, headers, body: bytes):
        parts = urlsplit(raw_path)
        query = parse_qs(parts.query)
        for route_method, pattern, handler in self.routes:
            match = re.fullmatch(pattern, parts.path)
            if route_method == method and match:
                args = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                if "type" in args:
                    args["type"] = args["type"].rstrip("s")
                if "ns" in args:
                    args["repo_id"] = f"{args.pop('ns')}/{args.pop('name')}"
                with self.hub.lock:
                    return handler(self.hub, headers=headers, body=body, query=query, method=method, **args)
        raise HubError(404, f"no route for {method} {parts.path}")
