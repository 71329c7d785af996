"""Keep third-party import chatter and download bars off the terminal."""

from __future__ import annotations

import logging
import os
import warnings


def quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    for name in ("bitsandbytes", "torchao", "torch.utils._pytree", "httpx"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import diffusers.utils.logging
    import transformers.utils.logging

    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", module="torch.utils._pytree")
    warnings.filterwarnings("ignore", message=".*torchvision.*")
