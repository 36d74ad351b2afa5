"""Checkpoints: our format (safetensors + config.json), the four foreign layouts, pretrained downloads.

See docs/checkpoints.md for the layouts, the security policy and the release tags.
"""

from .build import create_pretrained, resolve_weights
from .convert import convert
from .errors import CheckpointError, DownloadError, UnsafeCheckpointError
from .io import load_state_dict, read_checkpoint, unwrap_state_dict
from .layouts import LAYOUTS, detect_layout, from_official, to_official
from .matching import infer_config, load_checked
from .ours import load, read_config, save
from .pretrained import RELEASES, Release, download, find_release

__all__ = [
    "LAYOUTS", "RELEASES", "CheckpointError", "DownloadError", "Release", "UnsafeCheckpointError",
    "convert", "create_pretrained", "detect_layout", "download", "find_release", "from_official", "infer_config",
    "load", "load_checked", "load_state_dict", "read_checkpoint", "read_config", "resolve_weights", "save",
    "to_official", "unwrap_state_dict",
]
