"""The wire contract of studio-imagegen-worker: models, error codes, version."""

from protocol.errors import ERROR_DATA_MODELS, ErrorCode
from protocol.version import PROTOCOL_VERSION, REQUEST_SCHEMA_TAG, RESPONSE_SCHEMA_TAG

__all__ = [
    "ERROR_DATA_MODELS",
    "PROTOCOL_VERSION",
    "REQUEST_SCHEMA_TAG",
    "RESPONSE_SCHEMA_TAG",
    "ErrorCode",
]
