"""batchgen: run batches of paid text-to-video generations overnight, without losing a clip or a dollar."""

from batchgen.errors import BatchgenError, ManifestError
from batchgen.jobs import Job, expand
from batchgen.manifest import Manifest, load_manifest

__version__ = "0.1.0"
__all__ = ["BatchgenError", "Job", "Manifest", "ManifestError", "__version__", "expand", "load_manifest"]
