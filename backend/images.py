"""Getting a task's image bytes: every download of the backend goes through this package of modules.

* :mod:`backend.urls` -- the one strict parse of an http(s) URL (what is checked is what is connected to);
* :mod:`backend.policy` -- which URLs may be fetched (allowed hosts, private addresses) and the bounds;
* :mod:`backend.ls_auth` -- Label Studio's ``Authorization`` header (label-studio-sdk token handling);
* :mod:`backend.transport` -- connections to exactly the checked host, one deadline, peer checks;
* :mod:`backend.download` -- :class:`ImageFetcher`: resolution of task references and the download;
* :mod:`backend.fetch_health` -- the last download outcome per Label Studio (``/health``).

This module keeps the names the rest of the backend imports.
"""
from __future__ import annotations

from .download import CLOUD_SCHEMES, REDIRECT_CODES, ImageFetcher, _size
from .fetch_health import DOWNLOADS, DownloadHealth
from .ls_auth import LabelStudioAuth
from .policy import (FetchPolicy, HostRule, ImageFetchError, MiB, address_kind, parse_allowed_hosts,
                     policy_from_settings)
from .urls import HttpURL, URLRefused, parse_http_url, show_url

__all__ = ["CLOUD_SCHEMES", "DOWNLOADS", "REDIRECT_CODES", "DownloadHealth", "FetchPolicy", "HostRule",
           "HttpURL", "ImageFetchError", "ImageFetcher", "LabelStudioAuth", "MiB", "URLRefused", "_size",
           "address_kind", "parse_allowed_hosts", "parse_http_url", "policy_from_settings", "show_url"]
