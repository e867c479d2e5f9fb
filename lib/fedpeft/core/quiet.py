"""Known, harmless messages of the study's libraries, dropped where they are logged; every other message still shows.

Each entry names the logger that emits one message, a pattern of that message, and why it says nothing about the
study's numbers. :func:`install` adds a filter to each named logger (a filter on the logger that creates a record
stops it before any handler, whatever the library configured). ``import fedpeft`` installs them, before any of
these libraries is imported, so every process of the study is quiet in the same way: a run stage, a notebook
kernel, a Ray actor, a Flower ClientApp. Warnings raised through :mod:`warnings` are filtered at the study's call
that triggers them instead (:mod:`fedpeft.quantization.ptq`, :mod:`fedpeft.federated.flower_engine`).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class KnownMessage:
    logger: str  # the logger that creates the record (a filter on a parent would not see it)
    pattern: str  # a regular expression searched in the formatted message
    why: str  # why it is harmless here


KNOWN_MESSAGES = (
    KnownMessage(
        "torch.utils._pytree", r"is an Enum subclass and is now natively supported by torch\.compile",
        "torchao 0.18 registers two of its enums as pytree constants when it is imported (peft, transformers and diffusers "
        "import it); torch 2.14 handles enums itself and deprecates that call. Twice per process, at import."),
    KnownMessage(
        "bitsandbytes.backends.cpu.ops", r"Failed to load CPU gemm_4bit_forward from kernels-community",
        "on CPUs with AVX512-BF16, bitsandbytes looks for a downloadable kernel of its bf16 evaluation path when it is "
        "imported; the study switches that path off (fedpeft.quantization.nf4.pin_cpu_path) and runs offline."),
    KnownMessage(
        "diffusers.quantizers.torchao.torchao_quantizer", r"Unable to import `torchao` Tensor objects",
        "diffusers 0.42 imports torchao classes that torchao 0.18 moved, to allow loading torchao-quantized diffusers "
        "checkpoints; the study loads none."),
)


class _DropKnown(logging.Filter):
    def __init__(self, known: KnownMessage) -> None:
        super().__init__()
        self.known = known
        self.regex = re.compile(known.pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.regex.search(record.getMessage())


def install(known: tuple[KnownMessage, ...] = KNOWN_MESSAGES) -> None:
    """Add a filter for each known message to its logger (once: installing again changes nothing)."""
    for k in known:
        logger = logging.getLogger(k.logger)
        if not any(isinstance(f, _DropKnown) and f.known == k for f in logger.filters):
            logger.addFilter(_DropKnown(k))
