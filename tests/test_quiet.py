"""Quiet runs (issue 28): the known, harmless messages of the study's libraries are dropped where they are logged,
and every other message still shows."""

from __future__ import annotations

import logging
import re
import subprocess
import sys

import pytest

from fedpeft.core import quiet


@pytest.mark.parametrize("known", quiet.KNOWN_MESSAGES, ids=lambda k: k.logger)
def test_a_known_message_is_dropped_and_another_of_its_logger_still_shows(known, caplog):
    quiet.install()
    example = {
        "torch.utils._pytree": "<enum 'KernelPreference'> is an Enum subclass and is now natively supported by torch.compile",
        "bitsandbytes.backends.cpu.ops": "Failed to load CPU gemm_4bit_forward from kernels-community: No module named 'kernels'",
        "diffusers.quantizers.torchao.torchao_quantizer": "Unable to import `torchao` Tensor objects. This may affect ...",
    }[known.logger]
    logger = logging.getLogger(known.logger)
    with caplog.at_level(logging.WARNING):
        logger.warning(example)
        logger.warning("a real warning of the same library")
        logging.getLogger("some.other.library").warning(example)  # the same words from elsewhere are not the known message
    assert [(r.name, r.getMessage()) for r in caplog.records] == [
        (known.logger, "a real warning of the same library"), ("some.other.library", example)]


def test_installing_twice_adds_no_second_filter():
    quiet.install()
    quiet.install()
    for known in quiet.KNOWN_MESSAGES:
        assert sum(getattr(f, "known", None) == known for f in logging.getLogger(known.logger).filters) == 1


def test_importing_the_libraries_after_fedpeft_prints_none_of_the_known_messages():
    """What every run stage and notebook does: fedpeft first, then peft (bitsandbytes, torchao) and diffusers' UNet
    (its torchao quantizer). Without fedpeft's filters this printed the pytree, torchao and (on AVX512-BF16 CPUs)
    bitsandbytes messages."""
    code = ("import logging, fedpeft, peft, diffusers; from diffusers import UNet2DConditionModel; "
            "logging.getLogger('torch.utils._pytree').warning('still shown')")
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stderr
    assert "still shown" in err
    for known in quiet.KNOWN_MESSAGES:
        assert not re.search(known.pattern, err), err
