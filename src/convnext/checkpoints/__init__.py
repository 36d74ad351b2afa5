"""Checkpoints: our format (safetensors + config.json), the four foreign layouts, pretrained downloads.

See docs/checkpoints.md for the layouts, the security policy and the release tags.
"""

from .build import build_from_source, data_config_for, resolve_weights
from .convert import convert
from .errors import CheckpointError, DownloadError, UnsafeCheckpointError
from .io import load_state_dict, read_checkpoint, unwrap_state_dict
from .layouts import LAYOUTS, detect_layout, from_official, to_official
from .matching import infer_config, load_checked
from .ours import read_config, read_data_config, save
from .pretrained import RELEASES, Release, download, find_release, release_data_config, release_for_file
from .source import Source, is_training_checkpoint, read_source

__all__ = [
    "LAYOUTS", "RELEASES", "CheckpointError", "DownloadError", "Release", "Source", "UnsafeCheckpointError",
    "build_from_source", "convert", "data_config_for", "detect_layout", "download", "find_release", "from_official",
    "infer_config", "is_training_checkpoint", "load_checked", "load_state_dict", "read_checkpoint", "read_config",
    "read_data_config", "read_source", "release_data_config", "release_for_file", "resolve_weights", "save",
    "to_official", "unwrap_state_dict",
]
