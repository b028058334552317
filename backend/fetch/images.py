"""Getting a task's image bytes: every download of the backend goes through this package of modules.

* :mod:`backend.fetch.urls` -- the one strict parse of an http(s) URL (what is checked is what is connected to);
* :mod:`backend.fetch.policy` -- which URLs may be fetched (allowed hosts, private addresses) and the bounds;
* :mod:`backend.fetch.ls_auth` -- Label Studio's ``Authorization`` header (label-studio-sdk token handling);
* :mod:`backend.fetch.transport` -- connections to exactly the checked host, one deadline, peer checks;
* :mod:`backend.fetch.download` -- :class:`ImageFetcher`: resolution of task references and the download;
* :mod:`backend.fetch.health` -- the last download outcome per Label Studio (``/health``).

This module keeps the names the rest of the backend imports.
"""
from __future__ import annotations

from backend.fetch.download import CLOUD_SCHEMES, REDIRECT_CODES, ImageFetcher, _size
from backend.fetch.health import DOWNLOADS, DownloadHealth
from backend.fetch.ls_auth import LabelStudioAuth
from backend.fetch.policy import (FetchPolicy, HostRule, ImageFetchError, MiB, address_kind, parse_allowed_hosts,
                     policy_from_settings)
from backend.fetch.urls import HttpURL, URLRefused, parse_http_url, show_url

__all__ = ["CLOUD_SCHEMES", "DOWNLOADS", "REDIRECT_CODES", "DownloadHealth", "FetchPolicy", "HostRule",
           "HttpURL", "ImageFetchError", "ImageFetcher", "LabelStudioAuth", "MiB", "URLRefused", "_size",
           "address_kind", "parse_allowed_hosts", "parse_http_url", "policy_from_settings", "show_url"]
