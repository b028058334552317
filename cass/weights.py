"""Weight sources: the official checkpoints by name, or local files.

Sources (like open_clip's pretrained registry):

* CLIP: ``"openai"`` = OpenAI CLIP ViT-B/16 (the TorchScript archive the official CASS code loads,
  downloaded into the model dir and checked against the sha256 OpenAI publishes in its URL, the
  digest open_clip's registry verifies too); or a local file with an
  OpenAI-format CLIP state dict (``.pt`` TorchScript archive or plain state dict, ``.pth``,
  ``.safetensors``).
* DINO: ``"dino_vitb8"`` = the official DINO ViT-B/8 checkpoint, ``"dinov2_vitb14"`` = the official
  DINOv2 ViT-B/14 with 4 registers (``dinov2_vitb14_reg4_pretrain.pth``), both from
  dl.fbaipublicfiles.com; or a local file with an official DINO ``VisionTransformer`` / DINOv2
  ``DinoVisionTransformer`` state dict (``.pth``/``.pt``/``.safetensors``; a full training
  checkpoint's ``teacher`` entry works too).
* global CLIP (scale_up): ``"openai-vit-l-14"`` = OpenAI CLIP ViT-L/14 (sha256 from its URL), or a file.

Checksums: a download goes to ``<file>.part`` while its sha256 is computed and is renamed into place
only if it matches the pinned digest. Meta publishes no digest for the DINO / DINOv2 files (their
names carry none, unlike torch.hub's ``name-<hash>.pth`` convention, and no checksum file is served
beside them), so those are not verified: a warning says so and logs the digest that was received.

``local-file:PATH`` and a bare path are the same. The model dir is ``$CASS_MODEL_DIR`` or
``~/.cache/cass``; a named checkpoint already there is used without any network access.
"""
from __future__ import annotations

import hashlib
import logging
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # only load_state_dict needs torch; resolving sources stays light
    import torch

log = logging.getLogger("cass.weights")

CLIP_SOURCES = {
    "openai": {
        "url": "https://openaipublic.azureedge.net/clip/models/"
               "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt",
        "filename": "ViT-B-16.pt",
        "sha256": "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f",
        "description": "OpenAI CLIP ViT-B/16",
    },
}
DINO_SOURCES = {
    "dino_vitb8": {
        "url": "https://dl.fbaipublicfiles.com/dino/dino_vitbase8_pretrain/dino_vitbase8_pretrain.pth",
        "filename": "dino_vitbase8_pretrain.pth",
        "description": "DINO ViT-B/8 (official checkpoint)",
    },
    "dinov2_vitb14": {
        "url": "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_reg4_pretrain.pth",
        "filename": "dinov2_vitb14_reg4_pretrain.pth",
        "description": "DINOv2 ViT-B/14 with 4 registers (official checkpoint)",
    },
}
GLOBAL_CLIP_SOURCES = {
    "openai-vit-l-14": {
        "url": "https://openaipublic.azureedge.net/clip/models/"
               "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt",
        "filename": "ViT-L-14.pt",
        "sha256": "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836",
        "description": "OpenAI CLIP ViT-L/14 (scale_up global CLIP)",
    },
}


class WeightsError(RuntimeError):
    """A weight source that cannot be found, downloaded or understood."""


def model_dir() -> Path:
    return Path(os.environ.get("CASS_MODEL_DIR") or Path.home() / ".cache" / "cass")


@dataclass(frozen=True)
class ResolvedWeights:
    path: Path
    source: str


def resolve(source: str | os.PathLike, registry: dict, kind: str,
            download: Callable[..., None] | None = None) -> ResolvedWeights:
    """Turn a source name or path into a local file, downloading a named checkpoint if needed."""
    text = os.fspath(source)
    if text.startswith("local-file:"):
        text = text[len("local-file:"):]
    if text in registry:
        entry = registry[text]
        target = model_dir() / entry["filename"]
        if target.is_file():
            return ResolvedWeights(target, text)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            (download or download_file)(entry["url"], target, sha256=entry.get("sha256"))
        except Exception as exc:
            raise WeightsError(
                f"could not get the {entry['description']} weights ({kind} source {text!r}): {exc}. "
                f"Looked for {target} and tried {entry['url']}. Offline: download that file on a "
                f"machine with internet, copy it to {target} (or set CASS_MODEL_DIR), or pass its "
                f"path as the {kind} weights.") from exc
        return ResolvedWeights(target, text)
    path = Path(text).expanduser()
    if not path.is_file():
        known = ", ".join(sorted(registry))
        raise WeightsError(f"{kind} weights {text!r}: no such file, and not a known source name "
                           f"(known: {known})")
    return ResolvedWeights(path, str(path))


def download_file(url: str, target: Path, sha256: str | None = None, timeout: float = 60.0,
                  chunk: int = 1 << 20) -> str:
    """Stream ``url`` into ``target`` (via ``target.part``) and return its sha256 (hex).

    With ``sha256`` the file is only moved into place when the digest matches; otherwise the partial
    file is removed and :class:`WeightsError` names both digests. Without one a warning says the
    file was not verified.
    """
    tmp = target.with_suffix(target.suffix + ".part")
    h = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
            while block := response.read(chunk):
                h.update(block)
                out.write(block)
        digest = h.hexdigest()
        if sha256 and digest != sha256.lower():
            raise WeightsError(f"checksum mismatch for {url}: got sha256 {digest}, expected {sha256} "
                               f"(corrupt or tampered download; nothing was kept)")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if not sha256:
        log.warning("%s: no published checksum to verify against; received sha256 %s", url, digest)
    tmp.replace(target)
    return digest


def load_state_dict(path: str | os.PathLike, kind: str = "weights") -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors``, a pickled ``.pt``/``.pth`` or a TorchScript archive.

    Unwraps ``teacher`` / ``state_dict`` / ``model`` entries and ``module.`` / ``backbone.`` prefixes
    (DINO training checkpoints). All tensors are returned as stored (no dtype change).
    """
    import torch

    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            try:
                state = torch.load(str(path), map_location="cpu", weights_only=True)
            except Exception:
                # OpenAI's CLIP checkpoints are TorchScript archives.
                state = torch.jit.load(str(path), map_location="cpu").state_dict()
    except Exception as exc:
        raise WeightsError(f"{kind} file {path} is not a readable checkpoint "
                           f"(.safetensors, .pt/.pth state dict or TorchScript): {exc}") from exc
    if isinstance(state, dict):
        for key in ("teacher", "state_dict", "model"):
            if key in state and isinstance(state[key], dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{kind} file {path} does not contain a tensor state dict")
    cleaned = {}
    for key, value in state.items():
        for prefix in ("module.", "backbone."):
            if key.startswith(prefix):
                key = key[len(prefix):]
        cleaned[key] = value
    return cleaned


def file_digest(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 of a file (hex, first 16 chars), for cache fingerprints."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()[:16]
