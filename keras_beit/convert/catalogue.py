"""Catalogue names and hf:// handles: download, convert once, cache a keras preset.

`from_preset("beit_base_patch16_224")` or `from_preset("hf://microsoft/beit-base-patch16-224")`
resolves to a keras-hub preset directory under the cache (KERAS_BEIT_CACHE, by
default ~/.cache/keras_beit). The first load downloads the source with
huggingface_hub (which shows progress and honours HF_HUB_OFFLINE and its own
cache), converts it, and writes the preset atomically; later loads read it
directly.
"""

import json
import os
import shutil
import tempfile

from keras_hub.src.utils.preset_utils import IMAGE_CONVERTER_CONFIG_FILE
from keras_hub.src.utils.preset_utils import TASK_CONFIG_FILE
from keras_hub.src.utils.preset_utils import KerasPresetLoader
from keras_hub.src.utils.preset_utils import check_config_class
from keras_hub.src.utils.preset_utils import check_file_exists
from keras_hub.src.utils.preset_utils import load_json

from keras_beit.models.backbone import BEiTBackbone
from keras_beit.models.image_converter import BEiTImageConverter
from keras_beit.models.preset_loading import BEiTPresetLoader
from keras_beit.models.preset_loading import get_preset_loader
from keras_beit.models.preset_loading import register_preset_loader
from keras_beit.presets import BUNDLED
from keras_beit.presets import CATALOGUE

HF_PREFIX = "hf://"
# What a converter may need from a model repository; other files are never fetched.
SOURCE_FILES = [
    "config.json",
    "preprocessor_config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "model-*.safetensors",
    "pytorch_model.bin",
]


def cache_dir():
    return os.environ.get("KERAS_BEIT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "keras_beit")


# What keras-hub's save_to_preset writes; a directory holding only these may be replaced.
PRESET_FILES = {
    "config.json", "metadata.json", "model.weights.h5", "task.json", "task.weights.h5",
    "preprocessor.json", "image_converter.json", "assets",
}


def _refuse_to_replace(output_dir):
    """Raises unless `output_dir` is absent, empty, or a keras_beit preset: nothing else may be lost."""
    if not os.path.isdir(output_dir):
        if os.path.exists(output_dir):
            raise FileExistsError(f"{output_dir} exists and is not a directory; choose another output directory.")
        return
    entries = sorted(os.listdir(output_dir))
    if entries and (set(entries) - PRESET_FILES or not _is_converted(output_dir)):
        raise FileExistsError(
            f"{output_dir} exists and is not a keras_beit preset (it holds {entries}); "
            "nothing was written. Choose a new output directory, or remove this one."
        )


def write_preset(model, output_dir, image_converter=None):
    """Saves `model` as a keras-hub preset, built in a temporary directory and moved into place.

    An existing `output_dir` is replaced only when it is empty or a preset
    itself, so a conversion never deletes anything else (a source
    checkpoint included).
    """
    output_dir = os.path.abspath(output_dir)
    _refuse_to_replace(output_dir)
    parent = os.path.dirname(output_dir)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".keras_beit_", dir=parent)
    # mkdtemp makes it private (0700); a preset gets a plain directory's permissions.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)
    try:
        model.save_to_preset(staging)
        if image_converter is not None:
            image_converter.save_to_preset(staging)
        if os.path.exists(output_dir):
            retired = tempfile.mkdtemp(prefix=".keras_beit_old_", dir=parent)
            os.replace(output_dir, os.path.join(retired, "preset"))
            os.replace(staging, output_dir)
            shutil.rmtree(retired)
        else:
            os.replace(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output_dir


def load_source(source, **kwargs):
    """The model a checkpoint holds: its task model when it has a head, else the backbone."""
    loader = get_preset_loader(source)
    if isinstance(loader, KerasPresetLoader):
        task_cls = None
        if check_file_exists(loader.preset, TASK_CONFIG_FILE):
            task_cls = check_config_class(load_json(loader.preset, TASK_CONFIG_FILE))
    else:
        task_cls = getattr(loader, "checkpoint_task", lambda: None)()
    if task_cls is None:
        return BEiTBackbone.from_preset(source, **kwargs), _image_converter(source, loader)
    task = task_cls.from_preset(source, **kwargs)
    # A task without a preprocessor (masked image modeling) keeps the checkpoint's converter beside it.
    return task, None if task.preprocessor is not None else _image_converter(source, loader)


def _image_converter(source, loader):
    if isinstance(loader, KerasPresetLoader) and not check_file_exists(loader.preset, IMAGE_CONVERTER_CONFIG_FILE):
        return None
    return BEiTImageConverter.from_preset(source)


def convert(source, output_dir, **kwargs):
    """Converts any supported checkpoint (directory, .pth file) to a keras-hub preset."""
    _refuse_to_replace(os.path.abspath(output_dir))  # before the work, not only before the move
    print(f"Converting {source} to a keras_beit preset in {output_dir} ...", flush=True)
    model, image_converter = load_source(source, **kwargs)
    return write_preset(model, output_dir, image_converter)


class PresetDownloadError(OSError):
    """A catalogue name or hf:// handle whose files could not be fetched from the hub."""


def _downloaded(fetch, repo_id):
    try:
        return fetch()
    except OSError as error:  # huggingface_hub's connection, HTTP and offline-cache errors are all OSErrors
        cause = (str(error).strip().splitlines() or [""])[0][:200]
        raise PresetDownloadError(
            f"Could not fetch {repo_id!r} from the Hugging Face hub. Without hub access, pass a local copy to "
            "from_preset: a transformers or timm directory, an original .pth file or a keras-hub preset directory; "
            f"or use the bundled preset {sorted(BUNDLED)[0]!r}. HF_HUB_OFFLINE=1 makes this fail at once instead of "
            f"after huggingface_hub's retries. ({type(error).__name__}: {cause})"
        ) from error


def download_hf(repo_id):
    """A local snapshot of a Hugging Face model repository (progress bars included)."""
    from huggingface_hub import snapshot_download

    return _downloaded(lambda: snapshot_download(repo_id, allow_patterns=SOURCE_FILES), repo_id)


def _is_converted(directory):
    return os.path.isfile(os.path.join(directory, "config.json")) and os.path.isfile(
        os.path.join(directory, "metadata.json")
    )


def bundled_path(name):
    """The directory of a preset shipped inside the package."""
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", name)


def _repo_id(handle):
    if handle in CATALOGUE:
        sources = CATALOGUE[handle]["sources"]
        return sources.get("hf") or sources["timm"]
    return handle[len(HF_PREFIX):]


def source_path(handle):
    """The local checkpoint behind a handle: the download of a catalogue name or hf:// repo, else the path."""
    if handle in BUNDLED:
        raise ValueError(f"{handle} is a preset trained here; it has no source checkpoint to verify against.")
    if handle in CATALOGUE or handle.startswith(HF_PREFIX):
        return download_hf(_repo_id(handle))
    return handle


def resolve(handle):
    """A converted, cached preset directory for a catalogue name or hf:// handle."""
    if handle in BUNDLED:
        return bundled_path(handle)
    repo_id = _repo_id(handle)
    if handle in CATALOGUE:
        target = os.path.join(cache_dir(), "catalogue", handle)
    else:
        target = os.path.join(cache_dir(), "hf", repo_id.replace("/", "--"))
    if not _is_converted(target):
        convert(download_hf(repo_id), target)
    return target


@register_preset_loader
def catalogue_loader(preset):
    if not isinstance(preset, str):
        return None
    if preset not in CATALOGUE and preset not in BUNDLED and not preset.startswith(HF_PREFIX):
        return None
    if preset.startswith(HF_PREFIX) and not _is_beit_repo(preset[len(HF_PREFIX):]):
        return None  # a keras-hub preset hosted on the hub: keras-hub reads it itself
    directory = resolve(preset)
    return BEiTPresetLoader(directory, load_json(directory, "config.json"))


def _is_beit_repo(repo_id):
    from huggingface_hub import hf_hub_download

    with open(_downloaded(lambda: hf_hub_download(repo_id, "config.json"), repo_id)) as f:
        config = json.load(f)
    return "registered_name" not in config
