"""The model catalog (a data file) and resolving what a user typed for ``--model``."""

from __future__ import annotations

import difflib
import json
import os
import re
from functools import lru_cache
from importlib import resources
from pathlib import Path

from ..bounded import BINARY_SUFFIXES, shown
from ..errors import UnknownModelError
from .arch import ModelArch
from .hf_config import arch_from_config, read_config_file


MAX_SPEC_CHARS = 4096  # PATH_MAX: no model name, hub id or path is longer


def _normalise(name: str) -> str:
    """Forgiving match key: case, '-', '_', '.', spaces and an org prefix do not matter."""
    name = name.strip().lower().split("/")[-1]
    name = re.sub(r"^(meta-)", "", name)
    return re.sub(r"[-_.\s]", "", name)


@lru_cache(maxsize=1)
def catalog_entries() -> list[dict]:
    data = json.loads(resources.files("advisor.models").joinpath("catalog.json").read_text(encoding="utf-8"))
    return data["models"]


def catalog_names() -> list[str]:
    return [entry["name"] for entry in catalog_entries()]


def _catalog_index() -> dict[str, dict]:
    index: dict[str, dict] = {}
    for entry in catalog_entries():
        for key in (entry["name"], entry.get("hf_id") or ""):
            if key:
                index[_normalise(key)] = entry
    return index


def catalog_arch(name: str) -> ModelArch | None:
    entry = _catalog_index().get(_normalise(name))
    if entry is None:
        return None
    return arch_from_config(entry["config"], name=entry["name"])


def entry_model_type(entry: dict) -> str:
    """The model_type that decides how an entry is read: the outer one when a family reader knows it (a
    vision-language model), else the language model's."""
    from .families import READERS

    config = entry["config"]
    outer = config.get("model_type")
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    return outer if outer in READERS or not text.get("model_type") else text["model_type"]


def hub_id_for(arch_name: str) -> str:
    """The Hugging Face repo id of a catalog model (exports need it); other names are returned as given."""
    entry = _catalog_index().get(_normalise(arch_name))
    return (entry or {}).get("hf_id") or arch_name


def nearest_names(name: str, count: int = 3) -> list[str]:
    """The catalog names closest to what was typed, best first."""
    keys = {_normalise(n): n for n in catalog_names()}
    scored = sorted(keys, key=lambda k: difflib.SequenceMatcher(None, _normalise(name), k).ratio(), reverse=True)
    return [keys[k] for k in scored[:count]]


def _looks_like_hub_id(name: str) -> bool:
    return re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", name) is not None


def _from_hub(repo_id: str) -> ModelArch:
    """config.json only, through huggingface_hub (which honours HF_HUB_OFFLINE and its cache)."""
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError
    except ImportError:
        raise UnknownModelError(
            f"{repo_id!r} is not in the catalog and huggingface_hub is not installed",
            "pip install huggingface_hub, or pass a local config.json",
        ) from None
    import logging

    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)  # its retry warnings are not ours to print: the one-line error says it
    try:
        # a hub host that does not resolve is offline: read the cache only, instead of five backed-off retries
        path = hf_hub_download(repo_id, "config.json", local_files_only=not _hub_resolves())
    except LocalEntryNotFoundError:
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        raise UnknownModelError(
            f"{repo_id!r}: config.json is not in the local Hugging Face cache"
            + (" and HF_HUB_OFFLINE is set" if offline else " and the hub cannot be reached"),
            "download the model's config.json and pass its path, or pick a catalog model (lora-advisor models)",
        ) from None
    except OSError as exc:  # HF_HOME (its cache) is a file, unreadable, or full
        raise UnknownModelError(f"{repo_id!r}: the Hugging Face cache cannot be used: {exc.strerror or exc}",
                                "fix HF_HOME / HF_HUB_CACHE, or pass a local config.json") from None
    except (RepositoryNotFoundError, HfHubHTTPError) as exc:
        raise UnknownModelError(f"{repo_id!r}: the hub has no such model ({type(exc).__name__})",
                                "check the id; gated models need `hf auth login`") from None
    finally:
        hub_logger.setLevel(level)
    return arch_from_config(read_config_file(Path(path)), name=repo_id, source=repo_id)


def _hub_resolves() -> bool:
    """Whether the hub's host name resolves (HF_ENDPOINT's, else huggingface.co)."""
    import socket
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname
    try:
        return bool(host) and bool(socket.getaddrinfo(host, 443))
    except (OSError, UnicodeError):
        return False


def resolve_model(spec: str) -> ModelArch:
    """A catalog name, a config.json, a model directory, or a hub id."""
    if not isinstance(spec, str):
        raise UnknownModelError(f"the model must be a name or a path, not {shown(spec)}",
                                "name a catalog model, e.g. llama-3.1-8b", field="model", value=spec)
    spec = spec.strip()
    if not spec:
        raise UnknownModelError("no model given", "name a catalog model, e.g. llama-3.1-8b", field="model", value=spec)
    if len(spec) > MAX_SPEC_CHARS or "\0" in spec or not spec.isprintable():
        raise UnknownModelError(f"{shown(spec)} is not a model name, hub id or path",
                                "name a catalog model (lora-advisor models), a config.json or a hub id", field="model",
                                value=spec)
    path = Path(spec).expanduser()
    try:
        is_dir, exists = path.is_dir(), path.exists()
    except (OSError, ValueError):  # a name too long for the file system: not a path
        is_dir = exists = False
    if is_dir:
        path = path / "config.json"
        if not path.is_file():
            raise UnknownModelError(f"{spec}: the directory has no config.json", "give a model directory or its config.json")
    elif path.suffix.lower() in BINARY_SUFFIXES:
        raise UnknownModelError(f"{spec} is a {path.suffix} file, not a config.json",
                                "give the model's config.json or its directory", field="model", value=spec)
    if path.suffix == ".json" or is_dir or exists:
        if not (is_dir or exists):
            raise UnknownModelError(f"{spec}: no such file", "check the path to config.json")
        return arch_from_config(read_config_file(path), name=path.parent.name or str(path), source=str(path))
    arch = catalog_arch(spec)
    if arch is not None:
        return arch
    if _looks_like_hub_id(spec):
        return _from_hub(spec)
    raise UnknownModelError(
        f"unknown model {spec!r}",
        "nearest catalog names: " + ", ".join(nearest_names(spec)) + " (or pass a config.json / hub id)",
    )
