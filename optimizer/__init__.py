"""optimizer: import a model, run passes over its IR, save an artifact, run it.

    graph = optimizer.import_model("path/to/model")     # HF dir, .safetensors, .gguf
    graph = optimizer.PassManager(["dce"]).run(graph)
    optimizer.save(graph, "out/")
    rt = optimizer.runtime.load("out/", device="cpu")
"""

__version__ = "0.1.0"

from optimizer import runtime  # noqa: E402
from optimizer.artifact import save  # noqa: E402
from optimizer.importers import import_model  # noqa: E402
from optimizer.pass_manager import PassManager  # noqa: E402

__all__ = ["import_model", "PassManager", "save", "runtime", "__version__"]
