"""The one error type for what the user must fix, and the scrubbing of secrets from what is printed.

The CLI turns a `UserError` into its message and exit code 2, with no traceback.
Anything else is a bug and keeps its traceback. Every message and traceback the CLI prints goes
through `scrub` first: a Hub error may echo the request's `authorization` header.

A `Problem` is one such mistake found before any work (factory.preflight gathers them
from every stage's check into one UserError); it lives here, below the stages, so that the
helpers the stages share (factory.training) can build one without importing factory.stages.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass


class UserError(Exception):
    """Bad recipe, missing model, bad data row: something the user fixes, not a bug."""

    exit_code = 2


@dataclass(frozen=True)
class Problem:
    """A mistake found before any work: the dotted recipe key to fix and what is wrong. A warning
    is printed and the run goes on; anything else stops validate, plan and run with exit code 2,
    except a `machine` problem (a package missing here, not a mistake in the recipe): `run` refuses
    it, validate and plan only warn, since a recipe is often planned on another machine than its run."""

    key: str
    message: str
    warning: bool = False
    machine: bool = False


TOKEN_VARIABLES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
# `Bearer <anything>` and Hugging Face token shapes (hf_ or api_org_ then 30+ letters and digits),
# whoever's token they are; names like HF_ENDPOINT or hf_transfer are not tokens
_TOKEN_PATTERNS = re.compile(r"(?i:(?<=Bearer ))[^\s'\",;]+|\b(?:hf|api_org)_[A-Za-z0-9]{30,}")
HIDDEN = "***"


def secrets() -> set[str]:
    """The token values this process may send: the environment's, and the login cache's once
    huggingface_hub is loaded (a process that never loaded it never sent that token)."""
    found = {os.environ.get(name, "") for name in TOKEN_VARIABLES}
    if "huggingface_hub" in sys.modules:
        try:
            from huggingface_hub import get_token

            found.add(get_token() or "")
        except Exception:  # an unreadable token file must not hide the error being printed
            pass
    return {value.strip() for value in found if len(value.strip()) >= 4}


def scrub(text: str) -> str:
    """`text` with every known token value and every token-shaped string replaced by ***."""
    for value in sorted(secrets(), key=len, reverse=True):
        text = text.replace(value, HIDDEN)
    return _TOKEN_PATTERNS.sub(HIDDEN, text)


def scrub_logs() -> None:
    """Scrub every log record of this process when it is made: its message, and its traceback
    (formatted then, once), whatever handler prints it later."""
    import logging
    import traceback

    make_record = logging.getLogRecordFactory()

    def scrubbed_record(*args, **kwargs) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        try:
            record.msg, record.args = scrub(record.getMessage()), ()
        except Exception:  # a record whose arguments do not format is logging's to report
            return record
        if record.exc_info and not record.exc_text:
            record.exc_text = scrub("".join(traceback.format_exception(*record.exc_info)).rstrip("\n"))
        return record

    logging.setLogRecordFactory(scrubbed_record)
